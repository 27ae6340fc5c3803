"""Imported decoders through the one train loop: continued pretraining on the embedded
corpus with the model's own tokenizer.json (full and LoRA), fine-tuning through
finetune_text, generation; and a jaxbig GPT trained from scratch exported as Llama."""
import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from conftest import TINY_LM, metric_series  # noqa: E402
from jaxbig import cli, train  # noqa: E402
from jaxbig import run as run_lib  # noqa: E402
from jaxbig.interop import hf  # noqa: E402

SMALL = ['--config.data.seq_len=32', '--config.train.batch_size=8',
         '--config.train.log_every=1', '--config.train.eval_every=0',
         '--config.train.checkpoint_every=0', '--config.evals.val.num_examples=16']


def _bpe(path, vocab_size=400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    root = os.path.dirname(os.__file__)
    texts = [open(os.path.join(root, f), encoding='utf-8').read()
             for f in ('os.py', 'argparse.py', 'shutil.py', 'functools.py')]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=['<|endoftext|>'],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(path)
    return tok


@pytest.fixture(scope='module')
def gpt2_run(tfds_dir, tmp_path_factory):
    """A random GPT-2 with a BPE tokenizer.json, imported: (workdir, HF model, tokenizer)."""
    root = tmp_path_factory.mktemp('gpt2')
    tok = _bpe(str(root / 'tokenizer.json'))
    eos = tok.token_to_id('<|endoftext|>')
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=128,
                                     vocab_size=tok.get_vocab_size(), bos_token_id=eos,
                                     eos_token_id=eos)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(str(root / 'hf'))
    os.replace(root / 'tokenizer.json', root / 'hf' / 'tokenizer.json')
    hf.import_dir(str(root / 'hf'), str(root / 'run'))
    return str(root / 'run'), model, tok


def _falls(workdir):
    losses = list(metric_series(workdir).values())
    assert np.mean(losses[-3:]) < losses[0] - 0.05, losses
    return losses


def test_imported_run_carries_its_tokenizer(gpt2_run, capsys):
    workdir, model, tok = gpt2_run
    run = run_lib.load_run(workdir)
    assert run.config.data.tokenizer.endswith('tokenizer.json')
    text = 'def main(argv):\n    return 0\n'
    assert run.tokenizer.encode(text).tolist() == tok.encode(text).ids
    assert run.tokenizer.eos_id == tok.token_to_id('<|endoftext|>')
    assert cli.main(['generate', '--workdir', workdir, '--prompt', 'def main(',
                     '--max-new-tokens', '8', '--temperature', '0']) == 0
    assert capsys.readouterr().out.startswith('def main(')


@pytest.mark.slow  # ~30 s; an imported model's tokenizer in training: test_mlm's imported MLM
def test_continued_pretraining_tokenizes_with_the_model_tokenizer(gpt2_run, tmp_path):
    workdir, _, tok = gpt2_run
    out = str(tmp_path / 'cont')
    config = cli.load_config(f'experiments/lm.py:init={workdir},steps=10', SMALL)
    assert config.model.norm == 'layernorm' and config.init_from.path == workdir
    from jaxbig import data

    batch = data.build_pipeline(config.data, split='train', batch_size=8, seed=0).get_batch(0)
    assert batch['inputs'].max() >= 256  # BPE ids, not bytes
    first = tok.decode(batch['inputs'][0].tolist())
    assert len(first) > 32  # 32 tokens of source code are more than 32 characters
    train.train(config, out)
    _falls(out)


@pytest.mark.slow  # ~30-40 s; LoRA training, generation and merge are covered by test_lora,
# test_run and test_cli by default
def test_lora_continued_pretraining_generates_and_exports_merged(gpt2_run, tmp_path, capsys):
    workdir, _, _ = gpt2_run
    out = str(tmp_path / 'lora')
    lora = ['--config.lora.targets=[".*attn/(query|value)/kernel"]', '--config.lora.rank=4',
            '--config.optimizer.freeze=["(?!lora/).*"]', '--config.optimizer.lr=3e-2']
    train.train(cli.load_config(f'experiments/lm.py:init={workdir},steps=10', SMALL + lora),
                out)
    _falls(out)
    run = run_lib.load_run(out)
    assert 'lora' in run.params
    capsys.readouterr()
    assert cli.main(['generate', '--workdir', out, '--prompt', 'import ',
                     '--max-new-tokens', '8', '--temperature', '0']) == 0
    assert capsys.readouterr().out.startswith('import ')
    exported = str(tmp_path / 'exported')
    assert cli.main(['export', '--workdir', out, '--out', exported]) == 0
    back = transformers.GPT2LMHeadModel.from_pretrained(exported).eval()
    tokens = np.random.default_rng(0).integers(0, back.config.vocab_size, (2, 16))
    ours = np.asarray(run.model.apply({'params': run.params}, tokens.astype(np.int32)))
    with torch.no_grad():
        ref = back(torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    assert os.path.isfile(os.path.join(exported, 'tokenizer.json'))


@pytest.mark.slow  # ~20 s; finetune_text from jaxbig runs is covered by tests/test_finetune.py
def test_finetune_text_from_an_imported_decoder(gpt2_run, tmp_path):
    workdir, _, _ = gpt2_run
    out = str(tmp_path / 'ft')
    config = cli.load_config(
        f'experiments/finetune_text.py:init={workdir},mode=linear_probe,steps=30,seq=32,batch=16',
        ['--config.train.log_every=1', '--config.train.eval_every=0',
         '--config.evals.val.num_examples=32', '--config.evals.val.batch_size=16'])
    assert config.data.tokenizer.endswith('tokenizer.json')
    last = train.train(config, out)
    _falls(out)
    assert 0 <= last['val/accuracy'] <= 1


def test_jaxbig_gpt_trained_from_scratch_exports_as_llama(tfds_dir, tmp_path):
    workdir = str(tmp_path / 'lm')
    train.train(cli.load_config('experiments/lm.py:steps=2', TINY_LM), workdir)
    out = str(tmp_path / 'hf')
    info = hf.export_run(workdir, out)
    assert info['family'] == 'llama'
    back, loading = transformers.LlamaForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not loading['missing_keys'] and not loading['unexpected_keys']
    run = run_lib.load_run(workdir)
    tokens = np.random.default_rng(0).integers(0, 256, (2, 32)).astype(np.int32)
    ours = np.asarray(run.model.apply({'params': run.params}, tokens))
    with torch.no_grad():
        ref = back.eval()(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def _on_small_files(workdir, target) -> str:
    """A copy of the run `workdir` at `target` whose data is a JSONL of 16 standard-library
    files (4 held out): the imported run's BPE tokenizer then tokenizes ~0.4 MB, not the
    whole embedded corpus (what is measured does not depend on which text it is)."""
    import json
    import shutil

    root = os.path.dirname(os.__file__)
    names = sorted(f for f in os.listdir(root) if f.endswith('.py'))[:16]
    os.makedirs(target / 'text')
    with open(target / 'text' / 'small.jsonl', 'w') as f:
        for name in names:
            text = open(os.path.join(root, name), encoding='utf-8').read()
            f.write(json.dumps({'text': text}) + '\n')
    shutil.copytree(workdir, target / 'run')
    with open(target / 'run' / 'config.json') as f:
        config = json.load(f)
    config['data'].update(name='files', path=str(target / 'text'), splits='validation=0.25',
                          data_dir=str(target / 'cache'))
    with open(target / 'run' / 'config.json', 'w') as f:
        json.dump(config, f)
    return str(target / 'run')


def test_bits_per_byte_across_tokenizers(gpt2_run, tfds_dir, tmp_path):
    """val/bits_per_byte = total nats / UTF-8 bytes of the targets / ln 2, for BPE ids
    (checked against a NumPy recomputation) and for bytes (= loss / ln 2)."""
    from jaxbig import data
    from jaxbig.commands import eval as eval_cmd

    workdir = _on_small_files(gpt2_run[0], tmp_path / 'bpe')
    run = run_lib.load_run(workdir)
    text = open(os.path.join(os.path.dirname(os.__file__), 'textwrap.py'), encoding='utf-8').read()
    ids = run.tokenizer.encode(text)
    assert run.tokenizer.token_bytes()[ids].sum() == len(text.encode('utf-8'))
    results = eval_cmd.evaluate(workdir)
    cfg = run.config
    pipe = data.build_pipeline(cfg.data, split=cfg.evals.val.split,
                               batch_size=cfg.train.batch_size, seed=0, one_pass=True,
                               num_examples=cfg.evals.val.num_examples)
    nats = size = 0.0
    table = run.tokenizer.token_bytes()
    forward = jax.jit(lambda params, inputs: run.model.apply({'params': params}, inputs))
    for i in range(pipe.num_batches):  # 256 examples = 8 whole batches: no padding rows
        b = pipe.get_batch(i)
        logits = np.asarray(forward(run.params, b['inputs']), np.float64)
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                               keepdims=True)) - logits.max(-1, keepdims=True)
        nats -= np.take_along_axis(logp, b['targets'][..., None], -1).sum()
        size += table[b['targets']].sum()
    assert results['val/bits_per_byte'] == pytest.approx(nats / size / np.log(2), rel=1e-4)
    assert results['val/bits_per_byte'] < results['val/loss'] / np.log(2)  # >1 byte a token
    bytes_run = str(tmp_path / 'bytes')
    last = train.train(cli.load_config('experiments/lm.py:steps=2', TINY_LM), bytes_run)
    assert last['val/bits_per_byte'] == pytest.approx(last['val/loss'] / np.log(2), rel=1e-5)


def _family_model(family, vocab):
    """A tiny random model of each family jaxbig imports beyond GPT-2 / Llama (2 layers)."""
    base = dict(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2)
    configs = {
        'gemma': ('Gemma', dict(head_dim=16)),
        'gemma2': ('Gemma2', dict(head_dim=16, sliding_window=8)),
        'gemma3': ('Gemma3Text', dict(head_dim=16, sliding_window=8, num_hidden_layers=3,
                                      sliding_window_pattern=3)),
        'qwen3': ('Qwen3', dict(rope_parameters=dict(rope_type='yarn', factor=4.0, rope_theta=1e4,
                                                     original_max_position_embeddings=16),
                                max_position_embeddings=64)),
        'olmo2': ('Olmo2', dict(pad_token_id=0, eos_token_id=0)),
        'phi3': ('Phi3', dict(sliding_window=8, pad_token_id=0, eos_token_id=0)),
        'gpt_neox': ('GPTNeoX', dict(num_key_value_heads=None, rotary_pct=0.5)),
        'llama3': ('Llama', dict(rope_parameters=dict(
            rope_type='llama3', factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
            original_max_position_embeddings=16, rope_theta=1e4))),
        # Mixture-of-Experts: expert kernels through LoRA-beside training, prune, int8, export
        'mixtral': ('Mixtral', dict(num_local_experts=4, num_experts_per_tok=2,
                                    sliding_window=8)),
        'qwen3_moe': ('Qwen3Moe', dict(num_experts=4, num_experts_per_tok=2,
                                       moe_intermediate_size=32)),
        'olmoe': ('Olmoe', dict(num_experts=4, num_experts_per_tok=2, pad_token_id=0,
                                eos_token_id=0)),
    }
    name, extra = configs[family]
    kw = {k: v for k, v in dict(base, **extra).items() if v is not None}
    config = getattr(transformers, f'{name}Config')(**kw)
    torch.manual_seed(0)
    model_class = 'Gemma3ForCausalLM' if name == 'Gemma3Text' else f'{name}ForCausalLM'
    return getattr(transformers, model_class)(config).eval()


@pytest.mark.slow  # ~25 s a family; each family's import is held against transformers by
# default in test_interop_hf.py, and the commands below on GPT-2 / Llama in this file
@pytest.mark.parametrize('family', ['gemma', 'gemma2', 'gemma3', 'qwen3', 'olmo2', 'phi3',
                                    'gpt_neox', 'llama3', 'mixtral', 'qwen3_moe', 'olmoe'])
def test_each_family_trains_with_lora_quantizes_generates_and_exports(family, tfds_dir,
                                                                      tmp_path, capsys):
    """An imported model of each family through the tools a user runs on it: continued
    pretraining with LoRA adapters beside the trained weights (loss falls), eval, the
    one-shot prune report, int8 quantize, generate, export (adapters merged) ->
    transformers computes the same logits."""
    tok = _bpe(str(tmp_path / 'tokenizer.json'))
    _family_model(family, tok.get_vocab_size()).save_pretrained(str(tmp_path / 'hf'))
    os.replace(tmp_path / 'tokenizer.json', tmp_path / 'hf' / 'tokenizer.json')
    workdir, out = str(tmp_path / 'run'), str(tmp_path / 'lora')
    assert cli.main(['import', str(tmp_path / 'hf'), '--workdir', workdir]) == 0
    lora = ['--config.lora.targets=[".*attn/(query|value)/kernel"]', '--config.lora.rank=4',
            '--config.optimizer.lr=1e-2']
    train.train(cli.load_config(f'experiments/lm.py:init={workdir},steps=8', SMALL + lora), out)
    _falls(out)
    capsys.readouterr()
    assert cli.main(['eval', '--workdir', out]) == 0
    assert cli.main(['prune', '--workdir', workdir, '--sparsity', '0.5', '--num-batches',
                     '1']) == 0  # the imported run: prune refuses LoRA runs
    assert cli.main(['quantize', '--workdir', out]) == 0
    assert cli.main(['generate', '--workdir', out, '--prompt', 'import ', '--max-new-tokens',
                     '8', '--temperature', '0']) == 0
    assert capsys.readouterr().out.count('import ') >= 1
    exported = str(tmp_path / 'exported')
    as_family = ['--as', 'phi3'] if family == 'phi3' else []
    assert cli.main(['export', '--workdir', out, '--out', exported, *as_family]) == 0
    back = transformers.AutoModelForCausalLM.from_pretrained(exported).eval()
    run = run_lib.load_run(out)
    tokens = np.random.default_rng(0).integers(0, back.config.vocab_size, (2, 24))
    ours = np.asarray(run.model.apply({'params': run.params}, tokens.astype(np.int32)))
    with torch.no_grad():
        ref = back(torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_dpo_from_an_imported_run(gpt2_run, tmp_path):
    """experiments/dpo.py:init=<an imported GPT-2> takes its model and BPE tokenizer: DPO on
    plain-string pairs starts at log 2 (policy = its frozen reference) and the loss falls."""
    import json

    workdir, _, _ = gpt2_run
    path = tmp_path / 'prefs.jsonl'
    path.write_text(''.join(json.dumps(dict(prompt=f'def f{i}(x):', chosen=' return x',
                                            rejected=' pass')) + '\n' for i in range(64)))
    out = str(tmp_path / 'dpo')
    train.train(cli.load_config(
        f'experiments/dpo.py:init={workdir},data={path},steps=8,batch=8,seq=32',
        ['--config.optimizer.lr=1e-3', '--config.train.log_every=1',
         '--config.data.splits=validation=0.25', '--config.evals.gen.num_examples=2',
         '--config.evals.val.num_examples=4']), out)
    losses = metric_series(out)
    assert losses[1] == pytest.approx(np.log(2), abs=1e-5)
    assert losses[8] < losses[1] - 0.05, losses
    assert run_lib.read_config(out).data.tokenizer == run_lib.read_config(workdir).data.tokenizer
