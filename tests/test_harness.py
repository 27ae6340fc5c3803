"""`jaxbig harness` (lm-evaluation-harness on jaxbig runs): parity with lm-eval's own Hugging
Face backend on an imported model, the CLI on a trained run, the training evaluator, the
embedded tasks and the one-line refusals."""
import json
import os

import numpy as np
import pytest

lm_eval = pytest.importorskip('lm_eval')
torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from conftest import run_cli  # noqa: E402

from jaxbig import cli  # noqa: E402
from jaxbig.harness import evaluate, model, scoring, tasks  # noqa: E402

TASKS = ['stdlib_next_line', 'stdlib_word_completion', 'stdlib_files']
CHATML = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
          "{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LIMIT = 12


def _tokenizer(path):
    """A byte-level BPE with a Llama-style BOS post-processor, saved as transformers does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    texts = [t for _, t in tasks.held_out_files()[:8]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=400, special_tokens=['<s>', '</s>'],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(
        single='<s> $A', special_tokens=[('<s>', tok.token_to_id('<s>'))])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token='<s>',
                                                eos_token='</s>')
    fast.chat_template = CHATML
    fast.save_pretrained(path)
    return fast


@pytest.fixture(scope='module')
def imported(tmp_path_factory):
    """(HF directory, jaxbig workdir) of one tiny random Llama with a BOS tokenizer."""
    root = tmp_path_factory.mktemp('harness')
    hf = str(root / 'hf')
    tok = _tokenizer(hf)
    config = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, rope_theta=5000.0)
    torch.manual_seed(0)
    net = transformers.LlamaForCausalLM(config)
    for p in net.parameters():  # spread logits: greedy choices are far from ties
        torch.nn.init.normal_(p, std=0.2)
    net.save_pretrained(hf)
    workdir = str(root / 'run')
    assert cli.main(['import', hf, '--workdir', workdir]) == 0
    return hf, workdir


def _samples(lm, tasks=TASKS, limit=LIMIT, **kwargs):
    manager = evaluate.task_manager()
    out = lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=limit, task_manager=manager,
                                  log_samples=True, bootstrap_iters=0, **kwargs)
    return out['results'], out['samples']


def test_parity_with_lm_eval_hf_backend(imported):
    """Every request's answer and every metric equal lm-eval's `hf` model on the original
    directory: choices' log-likelihoods and rolling perplexities within 1e-4 relative,
    greedy flags, accuracies and generated texts identical."""
    from lm_eval.models.huggingface import HFLM

    hf_dir, workdir = imported
    ref = HFLM(pretrained=hf_dir, batch_size=1, max_length=64, device='cpu', dtype='float32')
    ours = model.JaxbigLM(workdir=workdir, batch_size=4, max_length=64)
    (ref_results, ref_samples), (results, samples) = _samples(ref), _samples(ours)
    generated = []
    for task in TASKS:
        assert len(samples[task]) == len(ref_samples[task]) == LIMIT
        for a, b in zip(samples[task], ref_samples[task], strict=True):
            assert a['doc'] == b['doc']
            for x, y in zip(a['resps'], b['resps'], strict=True):
                if isinstance(y[0], str):
                    assert x[0] == y[0]
                    generated.append(x[0])
                elif isinstance(y[0], (tuple, list)):  # (log-likelihood, greedy)
                    assert x[0][1] == y[0][1]
                    np.testing.assert_allclose(x[0][0], y[0][0], rtol=1e-4)
                else:  # a rolling log-likelihood
                    np.testing.assert_allclose(x[0], y[0], rtol=1e-4)
        for key, value in ref_results[task].items():
            if not isinstance(value, float):  # alias, stderr 'N/A' without bootstrap
                continue
            if key.startswith(('acc', 'exact_match')):
                assert results[task][key] == value, (task, key)
            elif 'perplexity' in key or 'bits_per_byte' in key:
                np.testing.assert_allclose(results[task][key], value, rtol=1e-4)
    assert any(generated)  # the texts compared are not all empty


def test_scorer_matches_numpy_log_softmax(imported):
    """One request scored by hand: NumPy log-softmax of the model's logits at the
    continuation's positions, summed; rows of different lengths share a batch."""
    import jax

    from jaxbig import run as run_lib

    run = run_lib.load_run(imported[1])
    scorer = scoring.Scorer(run.model, run.params, batch_size=4, max_length=64)
    pairs = [([5, 6, 7, 8, 9], [10, 11]), ([3] * 20, [4]), ([7], [8, 9, 10])]
    got = scorer.loglikelihoods(pairs)
    for (context, continuation), (logp, greedy) in zip(pairs, got, strict=True):
        whole = np.asarray(context + continuation)
        logits = np.asarray(jax.jit(lambda p, t: run.model.apply({'params': p}, t))(
            run.params, whole[None, :-1]), np.float64)[0]
        logsm = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                                keepdims=True)) - logits.max(-1, keepdims=True)
        n = len(continuation)
        rows = np.arange(len(whole) - 1 - n, len(whole) - 1)
        np.testing.assert_allclose(logp, logsm[rows, whole[-n:]].sum(), rtol=1e-5)
        assert greedy == bool((logits[rows].argmax(-1) == whole[-n:]).all())


def test_bucket_lengths():
    assert [scoring.bucket(n, 128) for n in (1, 16, 17, 33, 100, 128)] == [16, 16, 32, 64, 128,
                                                                          128]
    assert scoring.bucket(40, 48) == 48 and scoring.bucket(5, 8) == 8


def test_embedded_tasks_are_held_out_and_well_formed():
    from jaxbig.data.builders import pystdlib

    files = tasks.held_out_files()
    assert files and all(pystdlib.split_for_path(p) == 'validation' for p, _ in files)
    directory = tasks.embedded_dir()
    rows = {n: [json.loads(line) for line in open(os.path.join(directory, f'{n}.jsonl'))]
            for n in tasks.TASKS}
    assert {n: len(r) for n, r in rows.items()} == tasks.NUM_EXAMPLES
    for row in rows['stdlib_next_line']:
        assert len(row['choices']) == 4 and len(set(row['choices'])) == 4
        assert row['context'].endswith('\n') and len(row['context']) <= tasks.CONTEXT_CHARS
    for row in rows['stdlib_word_completion']:
        word = tasks.IDENTIFIER.findall(row['context'].split('\n')[-1] + row['target'])[-1]
        assert word.endswith(row['target']) and len(word) - len(row['target']) >= 2
        assert len(row['target']) >= 1 and not set(row['target']) & set(tasks.WORD_ENDS)
    assert all(len(r['text']) <= tasks.FILE_CHARS for r in rows['stdlib_files'])
    assert tasks.embedded_dir() == directory  # built once


def test_cli_on_a_trained_run(sft_run, tmp_path, capsys):
    out = tmp_path / 'results.json'
    assert cli.main(['harness', '--workdir', sft_run, '--tasks', 'jaxbig_stdlib', '--limit', '6',
                     '--output', str(out)]) == 0
    printed = capsys.readouterr().out
    written = json.loads(out.read_text())
    metrics = written['metrics']
    for task in TASKS:
        assert metrics[f'{task}/num_examples'] == 6 and f'{task}/' in printed
    assert 0 <= metrics['stdlib_next_line/acc'] <= 1
    np.testing.assert_allclose(metrics['stdlib_files/bits_per_byte'],
                               np.log2(metrics['stdlib_files/byte_perplexity']), rtol=1e-9)
    with open(os.path.join(sft_run, 'harness_results.jsonl')) as f:
        last = json.loads(f.readlines()[-1])
    assert last['step'] == written['step'] and last['limit'] == 6


@pytest.mark.parametrize('args, message', [
    (['--tasks', 'no_such_task'], "unknown task(s) ['no_such_task']"),
    (['--tasks', 'hellaswag', '--limit', '2'], 'never downloads'),
    (['--tasks', 'stdlib_files', '--include-path', '/nonexistent-dir'], 'not a directory'),
    (['--tasks', ' , '], 'give --tasks'),
    (['--tasks', 'stdlib_files', '--limit', '0'], 'must be > 0'),
])
def test_refusals_are_one_line(sft_run, args, message, capsys):
    assert cli.main(['harness', '--workdir', sft_run, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_sampling_requests_are_refused(sft_run, tmp_path):
    (tmp_path / 'sampled.yaml').write_text(
        (open(os.path.join(tasks.embedded_dir(), 'stdlib_word_completion.yaml')).read()
         .replace('task: stdlib_word_completion', 'task: sampled_completion')
         .replace('do_sample: false', 'do_sample: true\n  temperature: 0.7')))
    with pytest.raises(ValueError, match='decodes greedily'):
        evaluate.evaluate(model.JaxbigLM(workdir=sft_run), 'sampled_completion', limit=2,
                          include_path=[str(tmp_path)])


def test_training_evaluator_logs_harness_metrics(tfds_dir, tmp_path):
    from conftest import TINY_LM, metric_series

    workdir = str(tmp_path / 'run')
    run_cli('train', '--config', 'experiments/lm.py:steps=4,harness=4', '--workdir', workdir,
            *TINY_LM, '--config.train.eval_every=4', '--config.evals.val.num_examples=16',
            '--config.data.seq_len=128')
    for key in ('harness/stdlib_next_line/acc', 'harness/stdlib_files/bits_per_byte',
                'harness/stdlib_word_completion/exact_match'):
        assert list(metric_series(workdir, key)) == [4], key
    assert metric_series(workdir, 'harness/stdlib_next_line/num_examples') == {4: 4.0}


def test_registered_with_lm_eval(sft_run):
    """`import jaxbig.harness` makes model='jaxbig' usable in lm-eval's own Python API."""
    out = lm_eval.simple_evaluate(model='jaxbig', model_args=f'workdir={sft_run},batch_size=8',
                                  tasks=['stdlib_next_line'], limit=3,
                                  task_manager=evaluate.task_manager(), bootstrap_iters=0)
    assert out['results']['stdlib_next_line']['acc,none'] in (0.0, 1 / 3, 2 / 3, 1.0)
    assert out['config']['model'] == 'jaxbig'


@pytest.mark.slow  # an 8-device process (~11 s); the scorer is plain GSPMD jit
def test_sharded_over_eight_devices_equals_one(sft_run, tmp_path):
    """The same tasks on 8 CPU devices (the run's mesh: batch rows split 8 ways, params
    where the run's rules put them) give the same numbers as on one device."""
    one, eight = tmp_path / 'one.json', tmp_path / 'eight.json'
    args = ['harness', '--workdir', sft_run, '--tasks', 'jaxbig_stdlib', '--limit', '5']
    assert cli.main([*args, '--output', str(one)]) == 0
    run_cli(*args, '--output', str(eight), devices=8)
    a, b = (json.loads(p.read_text())['metrics'] for p in (one, eight))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-5, err_msg=key)


def test_only_decoders_are_scored():
    from jaxbig.models import gpt, mlp

    model.check_decoder(gpt.Model(vocab_size=8, num_layers=1, embed_dim=8, num_heads=1,
                                  mlp_dim=8))
    with pytest.raises(ValueError, match='decoder language models.*jaxbig.models.mlp'):
        model.check_decoder(mlp.Model())


def test_unknown_model_args_are_refused(sft_run):
    with pytest.raises(ValueError, match=r"model_args \['batchsize'\]"):
        model.JaxbigLM(workdir=sft_run, batchsize=8)


def test_a_cached_hub_dataset_is_not_refused(tmp_path, monkeypatch):
    """hellaswag's data in the datasets library's cache: the offline check lets it through
    (lm-eval then loads it from there); without it, the one-line refusal."""
    from datasets import config as datasets_config

    monkeypatch.setattr(datasets_config, 'HF_DATASETS_CACHE', tmp_path)
    with pytest.raises(evaluate.ConfigError, match='never downloads'):
        evaluate.check_tasks(['hellaswag'])
    (tmp_path / 'Rowan___hellaswag').mkdir()
    assert 'hellaswag' in evaluate.check_tasks(['hellaswag']).all_tasks


def test_chat_template_parity_with_lm_eval_hf_backend(imported):
    """--apply-chat-template: the same rendered prompts (few-shot examples as turns) and the
    same answers as lm-eval's hf backend; an assistant prefill is continued as transformers'
    continue_final_message renders it."""
    from lm_eval.models.huggingface import HFLM

    hf_dir, workdir = imported
    ref = HFLM(pretrained=hf_dir, batch_size=1, max_length=64, device='cpu', dtype='float32')
    ours = model.JaxbigLM(workdir=workdir, batch_size=4, max_length=64)
    tasks, kwargs = TASKS[:2], dict(limit=4, apply_chat_template=True, num_fewshot=1)
    (_, ref_samples), (_, samples) = _samples(ref, tasks, **kwargs), _samples(ours, tasks,
                                                                               **kwargs)
    for task in tasks:
        for a, b in zip(samples[task], ref_samples[task], strict=True):
            assert a['arguments'] == b['arguments'] and '<|im_start|>' in str(a['arguments'])
            for x, y in zip(a['resps'], b['resps'], strict=True):
                if isinstance(y[0], str):
                    assert x[0] == y[0]
                else:
                    assert x[0][1] == y[0][1]
                    np.testing.assert_allclose(x[0][0], y[0][0], rtol=1e-4)
    history = [{'role': 'user', 'content': 'def f():'}, {'role': 'assistant', 'content': ' ret'}]
    assert ours.apply_chat_template(history, add_generation_prompt=False) == \
        ref.tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=False,
                                          continue_final_message=True)
