"""Hugging Face interop against the real thing: tiny random models built by transformers
itself (nothing downloaded), imported into jaxbig, compared in float32; export round trips;
each bad input is one line and leaves the workdir untouched."""
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from conftest import edit_safetensors  # noqa: E402

from jaxbig import generate as gen  # noqa: E402
from jaxbig import run as run_lib  # noqa: E402
from jaxbig.config import ConfigError  # noqa: E402
from jaxbig.interop import hf  # noqa: E402

VOCAB = 96


def _gpt2(**kw):
    cfg = dict(n_layer=2, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=96)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**cfg, **kw}))


def _llama(cls='Llama', model_cls='', **kw):
    cfg = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=8,
               num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
               rope_theta=5000.0)
    config = getattr(transformers, f'{cls}Config')(**{**cfg, **kw})
    return getattr(transformers, model_cls or f'{cls}ForCausalLM')(config)


BUILDERS = {
    'gpt2': _gpt2,
    'llama_gqa_untied_scanned': _llama,  # 8 layers: the imported config scans
    'llama_tied_mha_2_layers': lambda: _llama(num_hidden_layers=2, num_key_value_heads=4,
                                              tie_word_embeddings=True),
    'qwen2_qkv_bias': lambda: _llama('Qwen2', num_hidden_layers=2),
    'mistral': lambda: _llama('Mistral', num_hidden_layers=2, sliding_window=None),
    # a window equal to max_position_embeddings (once silently dropped) below the tests'
    # 24-token inputs and 32-token generations: every test crosses it
    'mistral_window': lambda: _llama('Mistral', num_hidden_layers=2, sliding_window=16,
                                     max_position_embeddings=16),
    # Llama 3.1's rope scaling with an original context (16) below the tests' lengths
    'llama3_rope_scaling': lambda: _llama(num_hidden_layers=2, head_dim=16, rope_parameters=dict(
        rope_type='llama3', rope_theta=5000.0, factor=8.0, low_freq_factor=1.0,
        high_freq_factor=4.0, original_max_position_embeddings=16)),
    # Gemma: 1 + w norms, GeGLU, sqrt(d) embeddings, multi-query, head_dim 16 != 32 / 4
    'gemma': lambda: _llama('Gemma', num_hidden_layers=2, num_key_value_heads=1, head_dim=16),
    # Gemma 2: norms around both sublayers, soft-capped attention and output logits, local
    # (window 6) and global layers alternating, query_pre_attn_scalar != head_dim
    'gemma2': lambda: _llama('Gemma2', num_hidden_layers=4, head_dim=16, sliding_window=6,
                             query_pre_attn_scalar=24, attn_logit_softcapping=2.0,
                             final_logit_softcapping=3.0),
    # Gemma 3 (text): per-head q/k norms, 'LLG' over 4 layers (the pattern is cut short as in
    # the 26-layer 1B), a local RoPE of its own beside a linearly scaled global one
    'gemma3': lambda: _llama('Gemma3Text', 'Gemma3ForCausalLM', num_hidden_layers=4,
                             head_dim=16, sliding_window=6, sliding_window_pattern=3,
                             query_pre_attn_scalar=16, rope_theta=None, rope_parameters=dict(
                                 full_attention=dict(rope_type='linear', factor=4.0,
                                                     rope_theta=50000.0),
                                 sliding_attention=dict(rope_type='default', rope_theta=500.0))),
    # OLMo 2: norms after the sublayers, q/k norms over the whole projection
    'olmo2': lambda: _llama('Olmo2', num_hidden_layers=2),
    # Pythia's layout: parallel residual, RoPE on a quarter of each 16-feature head
    'gpt_neox': lambda: transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=96, rotary_pct=0.25, rotary_emb_base=5000)),
    # Phi-3: fused qkv and gate-up, a window (8) below the tests' lengths
    'phi3_window': lambda: _llama('Phi3', num_hidden_layers=2, sliding_window=8, pad_token_id=0),
    # Qwen3's per-head q/k norms and biases everywhere in attention, with YaRN
    'qwen3_qk_norm_yarn': lambda: _llama('Qwen3', num_hidden_layers=2, attention_bias=True,
                                         max_position_embeddings=64, rope_parameters=dict(
                                             rope_type='yarn', rope_theta=5000.0, factor=4.0,
                                             original_max_position_embeddings=16)),
    # Mixture-of-Experts: Mixtral (8 layers: scanned, experts stacked under the layers axis;
    # a window below the tests' lengths), Qwen3-MoE with its top-k weights not renormalised
    'mixtral_window_scanned': lambda: _llama('Mixtral', num_local_experts=4, num_experts_per_tok=2,
                                             sliding_window=8),
    'qwen3_moe': lambda: _llama('Qwen3Moe', num_hidden_layers=2, num_experts=4,
                                num_experts_per_tok=2, moe_intermediate_size=24,
                                norm_topk_prob=False),
    # Qwen3-MoE whose first layer keeps a dense MLP (mlp_only_layers: model.moe.first_dense)
    'qwen3_moe_dense_first': lambda: _llama('Qwen3Moe', num_hidden_layers=3, num_experts=4,
                                            num_experts_per_tok=2, moe_intermediate_size=24,
                                            norm_topk_prob=True, mlp_only_layers=[0]),
    # Qwen2-MoE: q/k/v biases, a shared expert (2 x moe_intermediate_size) behind a sigmoid
    # gate, top-k not renormalised, the first layer dense
    'qwen2_moe_shared': lambda: _llama('Qwen2Moe', num_hidden_layers=3, num_experts=4,
                                       num_experts_per_tok=2, moe_intermediate_size=24,
                                       shared_expert_intermediate_size=48, norm_topk_prob=False,
                                       mlp_only_layers=[0]),
    # OLMoE: q/k norms over the whole projection (as OLMo 2), top-k renormalised
    'olmoe': lambda: _llama('Olmoe', num_hidden_layers=2, num_experts=4, num_experts_per_tok=2,
                            intermediate_size=24, norm_topk_prob=True),
}


EXPORT_AS = {'phi3_window': 'phi3'}  # equivalent to a Mistral, so only on request


def _save(model, path, **kw):
    torch.manual_seed(0)
    for p in model.parameters():  # random biases and norms too, so their mapping is tested
        torch.nn.init.normal_(p, std=0.2)
    model.eval()
    model.save_pretrained(path, **kw)
    return model


@pytest.fixture(scope='module', params=sorted(BUILDERS))
def imported(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    model = _save(BUILDERS[request.param](), str(root / 'hf'))
    info = hf.import_dir(str(root / 'hf'), str(root / 'run'))
    return request.param, model, str(root), info


def _tokens(batch=2, seq=24, seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, (batch, seq)).astype(np.int32)


def test_logits_match_transformers(imported):
    name, model, root, info = imported
    run = run_lib.load_run(os.path.join(root, 'run'))
    tokens = _tokens()
    ours = np.asarray(run.model.apply({'params': run.params}, tokens))
    with torch.no_grad():
        ref = model(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    assert info['num_params'] == sum(p.numel() for p in model.parameters())  # tied: once


def _hf_greedy(model, prompts, n):
    width = max(len(p) for p in prompts)
    ids = np.zeros((len(prompts), width), np.int64)
    mask = np.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = p, 1
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    with torch.no_grad():
        out = model.generate(torch.tensor(ids), attention_mask=torch.tensor(mask),
                             do_sample=False, max_new_tokens=n, min_new_tokens=n)
    return out[:, width:].numpy()


# Mixtral's scanned, windowed MoE decodes through the same cache paths as the windowed
# (mistral_window, phi3_window, gemma2), scanned (llama_gqa_untied_scanned) and MoE
# (qwen3_moe, qwen2_moe_shared, olmoe) cases: its generation runs under -m slow (15 s).
SLOW_GENERATION = {'mixtral_window_scanned'}


@pytest.mark.parametrize('imported', [
    pytest.param(n, marks=pytest.mark.slow) if n in SLOW_GENERATION else n
    for n in sorted(BUILDERS)], indirect=True)
def test_greedy_generation_matches_transformers_left_padded(imported):
    """Three prompts of 5, 11 and 8 tokens, left-padded to 11 (the longest row has no
    padding: the batch-of-one case); GPT-2 also alone, at batch 1."""
    name, model, root, _ = imported
    run = run_lib.load_run(os.path.join(root, 'run'))
    rng = np.random.default_rng(1)
    single = [rng.integers(0, VOCAB, 7)]
    batches = [[rng.integers(0, VOCAB, n) for n in (5, 11, 8)]]
    for prompts in ([single] if name == 'gpt2' else []) + batches:
        ours, lengths = gen.generate(run.model, run.params, prompts, max_new_tokens=32,
                                     temperature=0)
        assert (lengths == 32).all()
        np.testing.assert_array_equal(ours, _hf_greedy(model, prompts, 32))


def test_export_round_trip_is_bit_identical_and_loads_cleanly(imported):
    name, model, root, _ = imported
    out = os.path.join(root, 'exported')
    hf.export_run(os.path.join(root, 'run'), out, as_family=EXPORT_AS.get(name, ''))
    cls = type(model)
    back, info = cls.from_pretrained(out, output_loading_info=True)
    assert not info['missing_keys'] and not info['unexpected_keys'], info
    want, got = model.state_dict(), back.state_dict()
    assert set(want) == set(got)
    for key in want:
        assert torch.equal(want[key], got[key]), key
    tokens = torch.tensor(_tokens(), dtype=torch.long)
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, back.eval()(tokens).logits)


def test_sharded_bfloat16_checkpoint_keeps_its_dtype(tmp_path):
    model = _save(_llama(num_hidden_layers=2).to(torch.bfloat16), str(tmp_path / 'hf'),
                  max_shard_size='20KB')
    assert os.path.exists(tmp_path / 'hf' / 'model.safetensors.index.json')
    info = hf.import_dir(str(tmp_path / 'hf'), str(tmp_path / 'run'))
    run = run_lib.load_run(str(tmp_path / 'run'))
    assert info['dtype'] == run.config.model.param_dtype == 'bfloat16'
    assert {str(x.dtype) for x in __import__('jax').tree.leaves(run.params)} == {'bfloat16'}
    want = model.state_dict()['model.layers.1.mlp.down_proj.weight'].float().numpy()
    got = np.asarray(run.params['layers_1']['mlp']['down']['kernel'], np.float32).T
    np.testing.assert_array_equal(got, want)
    hf.import_dir(str(tmp_path / 'hf'), str(tmp_path / 'run32'), param_dtype='float32')
    assert run_lib.load_run(str(tmp_path / 'run32')).config.model.param_dtype == 'float32'


def test_tokenizer_json_matches_transformers(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = [open(os.path.join(os.path.dirname(os.__file__), f), encoding='utf-8').read()
             for f in ('os.py', 'json/__init__.py', 'argparse.py')]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=VOCAB + 300,
                                                       special_tokens=['<|endoftext|>']))
    path = str(tmp_path / 'tokenizer.json')
    tok.save(path)
    ours = __import__('jaxbig.data.text.tokenizers', fromlist=['x']).from_config(
        {'tokenizer': path, 'eos_id': 0})
    ref = transformers.PreTrainedTokenizerFast(tokenizer_file=path)
    sample = texts[2][:3000]
    ids = ours.encode(sample)
    assert ids.tolist() == ref(sample)['input_ids']
    assert ours.decode(ids) == ref.decode(ids.tolist()) == sample
    assert ours.vocab_size == len(ref) and ours.eos_id == 0


def _fresh_hf(tmp_path, builder=_gpt2):
    path = str(tmp_path / 'hf')
    _save(builder(), path)
    return path


_edit_tensors = edit_safetensors


def _truncate(path):
    with open(path, 'r+b') as f:
        f.truncate(os.path.getsize(path) // 2)


def _write(directory, name, text):
    with open(os.path.join(directory, name), 'w') as f:
        f.write(text)


def _edit_config(path, **changes):
    file = os.path.join(path, 'config.json')
    cfg = json.load(open(file))
    cfg.update(changes)
    json.dump(cfg, open(file, 'w'))


BAD = {
    'no config.json': (lambda p: os.remove(os.path.join(p, 'config.json')),
                       'no config.json (not a Hugging Face model directory)'),
    'no weights': (lambda p: os.remove(os.path.join(p, 'model.safetensors')),
                   'no model.safetensors or model.safetensors.index.json'),
    'architecture': (lambda p: _edit_config(p, architectures=['BartForConditionalGeneration']),
                     "architecture 'BartForConditionalGeneration' is not supported (supported: "
                     'GPT2LMHeadModel, LlamaForCausalLM'),
    'field': (lambda p: _edit_config(p, activation_function='relu'),
              "activation_function='relu' is not representable"),
    'shape': (lambda p: _edit_tensors(p, lambda t: t.update(
        {'transformer.h.1.mlp.c_fc.bias': np.zeros(7, np.float32)})),
        'tensor transformer.h.1.mlp.c_fc.bias has shape (7,), expected (128,)'),
    'left over': (lambda p: _edit_tensors(p, lambda t: t.update(
        {'transformer.h.0.extra.weight': np.zeros(3, np.float32)})),
        'tensors left over after mapping to gpt2: transformer.h.0.extra.weight'),
    'missing': (lambda p: _edit_tensors(p, lambda t: t.pop('transformer.ln_f.bias')),
                'tensors missing for gpt2: transformer.ln_f.bias'),
    'truncated weights': (lambda p: _truncate(os.path.join(p, 'model.safetensors')),
                          'model.safetensors: not a readable safetensors file (SafetensorError'),
    'config.json not json': (lambda p: _write(p, 'config.json', '{"architectures": ['),
                             'config.json: not readable as JSON (Expecting value: line 1'),
    'config.json a list': (lambda p: _write(p, 'config.json', '[1, 2]'),
                           'config.json: expected a JSON object, found list'),
    'corrupt tokenizer.json': (lambda p: _write(p, 'tokenizer.json', '{"model": {"type": "BPE"'),
                               'tokenizer.json: not a usable tokenizer.json ('),
    'tokenizer.json of another kind': (
        lambda p: _write(p, 'tokenizer.json', json.dumps({'version': '1.0', 'model': 3})),
        'tokenizer.json: not a usable tokenizer.json ('),
    'corrupt tokenizer_config.json': (lambda p: _write(p, 'tokenizer_config.json', 'eos: </s>'),
                                      'tokenizer_config.json: not readable as JSON'),
}


@pytest.mark.parametrize('case', sorted(BAD))
def test_bad_input_is_one_line_and_leaves_no_workdir(tmp_path, case, capsys):
    """`jaxbig import` as a user calls it: exit 2, one line on stderr naming the file."""
    from jaxbig import cli

    path = _fresh_hf(tmp_path)
    edit, message = BAD[case]
    edit(path)
    workdir = tmp_path / 'run'
    capsys.readouterr()
    assert cli.main(['import', path, '--workdir', str(workdir)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and '\n' not in err, err
    assert not workdir.exists()
    assert [n for n in os.listdir(tmp_path) if n.startswith('.jaxbig-import')] == []


def test_unrepresentable_llama_fields(tmp_path):
    path = _fresh_hf(tmp_path, lambda: _llama(num_hidden_layers=1))
    _edit_config(path, rope_parameters={'rope_type': 'dynamic', 'factor': 2.0,
                                        'rope_theta': 10000.0})
    with pytest.raises(ConfigError, match="rope_parameters=.*rope_type 'dynamic': jaxbig "
                                          "computes 'default', 'linear', 'llama3', 'yarn'"):
        hf.import_dir(path, str(tmp_path / 'run'))
    _edit_config(path, rope_parameters={'rope_type': 'default', 'rope_theta': 1e4},
                 hidden_act='gelu')
    with pytest.raises(ConfigError, match="hidden_act='gelu' is not representable"):
        hf.import_dir(path, str(tmp_path / 'run'))
    assert not (tmp_path / 'run').exists()


RELEASED = {  # config.json fields of released checkpoints -> the jaxbig model fields
    'Mistral-7B-v0.1: a 4,096 window below 32k positions': (
        dict(model_type='mistral', sliding_window=4096, max_position_embeddings=32768),
        dict(sliding_window=4096, rope_scaling='default')),
    'Llama-3.1-8B (4.x rope_scaling)': (
        dict(rope_theta=500000.0, max_position_embeddings=131072, rope_scaling=dict(
            rope_type='llama3', factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
            original_max_position_embeddings=8192)),
        dict(rope_base=500000.0, rope_scaling='llama3', rope_factor=8.0,
             rope_original_max_len=8192, rope_high_freq_factor=4.0)),
    'Qwen3 with YaRN, no factor: from the context lengths': (
        dict(model_type='qwen3', max_position_embeddings=131072, rope_parameters=dict(
            rope_type='yarn', rope_theta=1e6, original_max_position_embeddings=32768)),
        dict(qk_norm='head', rope_scaling='yarn', rope_factor=4.0, sliding_window=0)),
    'Qwen2 whose every layer slides': (
        dict(model_type='qwen2', use_sliding_window=True, sliding_window=512,
             max_window_layers=0),
        dict(sliding_window=512, qkv_bias=True, out_bias=False)),
    'a Llama config carrying an unused sliding_window': (
        dict(model_type='llama', sliding_window=128), dict(sliding_window=0)),
}


@pytest.mark.parametrize('case', sorted(RELEASED))
def test_released_configs_map_to_model_fields(case):
    from jaxbig.interop import decoders

    fields, want = RELEASED[case]
    hf_config = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                     num_hidden_layers=4, num_attention_heads=4, **fields)
    got = decoders.LLAMA.model_config(hf_config)
    assert {k: got[k] for k in want} == want


@pytest.mark.parametrize('fields,message', [
    (dict(model_type='qwen2', use_sliding_window=True, sliding_window=64, max_window_layers=2),
     'max_window_layers=2 is not representable .*sliding and full attention mixed'),
    (dict(rope_parameters=dict(rope_type='yarn', factor=40.0, mscale=1.0, mscale_all_dim=1.0,
                               original_max_position_embeddings=4096, rope_theta=1e4)),
     "mscale / mscale_all_dim"),
    (dict(rope_scaling=dict(type='longrope', short_factor=[1.0], long_factor=[2.0])),
     "rope_scaling=.*rope_type 'longrope'"),
    (dict(rope_parameters=dict(rope_type='llama3', factor=8.0, rope_theta=1e4)),
     'llama3 needs low_freq_factor'),
    (dict(partial_rotary_factor=0.5), 'partial_rotary_factor=0.5: expected 1'),
])
def test_unrepresentable_rope_and_window_fields_are_one_line(fields, message):
    from jaxbig.interop import decoders

    hf_config = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                     num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=4096,
                     **fields)
    with pytest.raises(ConfigError, match=message) as e:
        decoders.LLAMA.model_config(hf_config)
    assert '\n' not in str(e.value)


def test_eos_outside_the_vocabulary_falls_back_to_the_tokenizers(imported):
    """Tiny test configs keep GPT-2's 50256 (transformers only warns): the run gets the
    tokenizer's own end-of-sequence id, not an id past its embedding table."""
    name, model, root, _ = imported
    config = run_lib.load_run(os.path.join(root, 'run')).config
    eos = model.config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    assert config.data.eos_id == (eos if eos is not None and eos < VOCAB else -1)


def test_export_offers_every_decoder_family():
    from jaxbig.commands import interop
    from jaxbig.interop import decoders

    assert interop.DECODERS == tuple(f.name for f in decoders.FAMILIES)


def test_cli_import_generate_export(tmp_path, capsys):
    """The user's path: jaxbig import, generate (greedy) equals transformers, jaxbig export."""
    from jaxbig import cli

    model = _save(_llama(num_hidden_layers=2), str(tmp_path / 'hf'))
    run = str(tmp_path / 'run')
    assert cli.main(['import', str(tmp_path / 'hf'), '--workdir', run]) == 0
    assert 'llama' in capsys.readouterr().out
    assert cli.main(['import', str(tmp_path / 'hf'), '--workdir', run]) == 2  # not twice
    assert 'already holds a run' in capsys.readouterr().err
    loaded = run_lib.load_run(run)
    prompt = [np.array([3, 14, 15, 92, 65])]
    ours, _ = gen.generate(loaded.model, loaded.params, prompt, max_new_tokens=16,
                           temperature=0)
    np.testing.assert_array_equal(ours, _hf_greedy(model, prompt, 16))
    out = str(tmp_path / 'exported')
    assert cli.main(['export', '--workdir', run, '--out', out]) == 0
    assert 'as llama' in capsys.readouterr().out
    assert cli.main(['export', '--workdir', run, '--out', out]) == 2  # not over a model
    assert cli.main(['export', '--workdir', run, '--out', str(tmp_path / 'x'),
                     '--as', 'gpt2']) == 2
    assert 'gpt2 needs other norm=' in capsys.readouterr().err
    back = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert type(back).__name__ == 'LlamaForCausalLM'
