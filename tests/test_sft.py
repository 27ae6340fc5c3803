"""Decoder SFT on the embedded conditional task: examples from source (ast), held-out files,
the response-only loss mask, packing (segment attention: packed == each example alone),
prompt tokens' zero gradients, the generation evaluator (exact match, chrF vs sacrebleu),
and real `experiments/sft.py` runs through the CLI (from scratch and from an LM workdir)."""
import itertools
import json
import os
import sys
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import REPO, metric_series, run_cli

from jaxbig import config as config_lib
from jaxbig import defaults, experiment
from jaxbig import generate as gen_lib
from jaxbig import run as run_lib
from jaxbig.config import ConfigError
from jaxbig.data.builders import conditional_task, pystdlib
from jaxbig.data.pipelines import conditional
from jaxbig.data.text.tokenizers import ByteTokenizer
from jaxbig.evals import generation
from jaxbig.losses import autoregressive
from jaxbig.models import gpt

BYTES = ByteTokenizer()
SOURCE = '''import os

class Stack:
    @property
    def top(self):
        """The last item."""
        return self.items[-1]

    def __len__(self):
        return len(self.items)

def walk(node, depth=0):
    # recursive: the name must not leak
    for child in node.children:
        walk(child, depth + 1)

async def fetch(url):
    """Get `url`.

    Multi-line docstring.
    """
    data = await get(url)
    return data
'''


def read_json(path):
    with open(path) as f:
        return json.load(f)


def data_config(tfds_dir, **overrides):
    base = defaults.conditional_data('name', 128)
    return ml_collections.ConfigDict({**base, 'data_dir': tfds_dir, **overrides})


@pytest.fixture(scope='session')
def name_examples(tfds_dir, name_task):
    conditional.prepare(data_config(tfds_dir))
    return conditional_task.load_examples(tfds_dir, 'name')


# ----------------------------------------------------------------------------- the task

def test_name_examples_from_source():
    got = conditional_task.file_examples('name', SOURCE)
    assert [(line, r) for line, _, r in got] == [(5, ' top'), (12, ' walk'), (17, ' fetch')]
    assert got[0][1] == ('def <name>(self):\n    """The last item."""\n    return self.items[-1]'
                         '\n# name:')  # dedented, decorator left out
    assert 'walk' not in got[1][1] and got[1][1].count('<name>') == 2  # def + recursive call
    assert got[2][1].startswith('async def <name>(url):')
    assert conditional_task.file_examples('name', 'def broken(:\n') == []  # does not parse


NESTED = '''
if True:
    def in_if(): pass
else:
    def in_else(): pass
try:
    def in_try(): pass
except ValueError:
    def in_except(): pass
finally:
    def in_finally(): pass
with open(x) as f:
    def in_with(): pass
for i in x:
    def in_for(): pass
while y:
    def in_while(): pass
match z:
    case 1:
        def in_case(): pass
class C:
    class D:
        async def in_nested_class(self):
            def in_function(): return lambda: 0
'''


def test_every_def_is_found_wherever_it_is_nested():
    """The statement walk finds the defs ast.walk finds (blocks, clauses, classes, defs)."""
    import ast

    got = [n.name for n in conditional_task._functions(NESTED)]
    walked = sorted((n for n in ast.walk(ast.parse(NESTED))
                     if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))),
                    key=lambda n: (n.lineno, n.col_offset))
    assert got == [n.name for n in walked] and len(got) == 11


def test_body_examples_from_source():
    got = conditional_task.file_examples('body', SOURCE)
    assert [line for line, _, _ in got] == [5, 17]  # only functions with a docstring
    assert got[0][1:] == ('def top(self):\n    """The last item."""\n',
                          '    return self.items[-1]\n')
    prompt, response = got[1][1:]
    assert prompt.startswith('async def fetch(url):\n    """Get') and prompt.endswith('"""\n')
    assert response == '    data = await get(url)\n    return data\n'
    assert conditional_task.file_examples('body', 'def f():\n    """Only a docstring."""\n') == []


def test_examples_held_out_by_file_and_cached(tfds_dir, name_examples):
    train, val = name_examples['train'], name_examples['validation']
    assert len(train) > 20000 and len(val) > 1000
    train_files, val_files = {e[0] for e in train}, {e[0] for e in val}
    assert not train_files & val_files
    assert {pystdlib.split_for_path(p) for p in train_files} == {'train'}
    assert {pystdlib.split_for_path(p) for p in val_files} == {'validation'}
    seen = {(p, r) for _, _, p, r in train}
    assert not any((p, r) in seen for _, _, p, r in val)  # copies across files dropped
    conditional_task.load_examples.cache_clear()  # read back from the cache file: the same
    assert conditional_task.load_examples(tfds_dir, 'name') == name_examples
    path, line, prompt, response = val[0]
    with open(os.path.join(pystdlib.stdlib_root(), path)) as f:  # deterministic: rebuilt
        rebuilt = conditional_task.file_examples('name', f.read())
    assert (line, prompt, response) in rebuilt


# ----------------------------------------------------------------------------- rows and masks

def random_examples(rng, n, vocab=50):
    """n (prompt ids, response ids + eos 0) pairs of random lengths, ids in [1, vocab)."""
    return [(rng.integers(1, vocab, rng.integers(2, 9)).astype(np.int32),
             np.append(rng.integers(1, vocab, rng.integers(1, 6)), 0).astype(np.int32))
            for _ in range(n)]


def test_mask_covers_response_tokens_only():
    p, r = np.array([5, 6, 7], np.int32), np.array([8, 9, 0], np.int32)
    inputs, targets, mask = conditional.example_arrays(p, r)
    np.testing.assert_array_equal(inputs, [5, 6, 7, 8, 9])
    np.testing.assert_array_equal(targets, [6, 7, 8, 9, 0])
    np.testing.assert_array_equal(mask, [0, 0, 1, 1, 1])  # targets 8, 9 and the eos


def test_greedy_rows_fill_rows_in_order():
    lengths = np.random.default_rng(0).integers(1, 30, 200)
    bounds = conditional.greedy_rows(lengths, 64)
    assert bounds[0] == 0 and bounds[-1] == len(lengths) and np.all(np.diff(bounds) > 0)
    for a, b in itertools.pairwise(bounds):
        assert lengths[a:b].sum() <= 64
        if b < len(lengths):
            assert lengths[a:b + 1].sum() > 64  # the next example did not fit


def test_packed_rows_hold_each_example_alone():
    rng = np.random.default_rng(1)
    examples = random_examples(rng, 5)
    batch = conditional.make_rows(examples, [[0, 1, 2], [3, 4]], 40, 0, packed=True)
    for row, group in enumerate([[0, 1, 2], [3, 4]]):
        for segment, j in enumerate(group, 1):
            at = batch['segment_ids'][row] == segment
            for key, want in zip(('inputs', 'targets', 'mask'),
                                 conditional.example_arrays(*examples[j])):
                np.testing.assert_array_equal(batch[key][row][at], want)
            np.testing.assert_array_equal(batch['positions'][row][at], np.arange(at.sum()))
        pad = batch['segment_ids'][row] == 0
        assert pad.any() and batch['mask'][row][pad].sum() == 0


def test_pipeline_batches_deterministic_and_split_over_processes(tfds_dir, name_examples):
    cfg = data_config(tfds_dir)
    one = conditional.build_pipeline(cfg, split='train', batch_size=4, seed=3)
    again = conditional.build_pipeline(cfg, split='train', batch_size=4, seed=3)
    halves = [conditional.build_pipeline(cfg, split='train', batch_size=4, seed=3,
                                         process_index=p, process_count=2) for p in (0, 1)]
    for i in (7, 0, 2):  # any order: batch i is a function of (seed, i)
        a, b = one.get_batch(i), again.get_batch(i)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
            np.testing.assert_array_equal(
                a[k], np.concatenate([h.get_batch(i)[k] for h in halves]))
    other = conditional.build_pipeline(cfg, split='train', batch_size=4, seed=4)
    assert not np.array_equal(other.get_batch(0)['inputs'], one.get_batch(0)['inputs'])
    batch, groups = one.get_batch(1), one.row_groups(1)
    assert set(batch) == {'inputs', 'targets', 'mask', 'segment_ids', 'positions'}
    for row, group in enumerate(groups):  # the masked targets are each response + eos
        for segment, j in enumerate(group, 1):
            at = (batch['segment_ids'][row] == segment) & (batch['mask'][row] == 1)
            np.testing.assert_array_equal(batch['targets'][row][at], one.examples[j][1])
            assert BYTES.decode(one.examples[j][1]) == one.references[j]
    n = len(one.examples)  # an epoch visits every example once
    order, bounds = one._epoch(0)
    assert sorted(order.tolist()) == list(range(n)) and bounds[-1] == n
    unpacked = conditional.build_pipeline(data_config(tfds_dir, pack=False), split='train',
                                          batch_size=4, seed=3)
    assert set(unpacked.get_batch(0)) == {'inputs', 'targets', 'mask'}
    assert all(len(g) == 1 for g in unpacked.row_groups(0))


# ----------------------------------------------------------------------------- loss and model

MODELS = {
    'rope_einsum_blocks': dict(attention_blocks=2),
    'xla_attention': dict(attention='xla'),
    'grouped_query_scan': dict(num_kv_heads=1, scan_layers=True),
    'gpt2_learned_positions': dict(positions='learned', max_len=64, norm='layernorm',
                                   mlp='gelu', qkv_bias=True),
}


def tiny_model(**kw):
    base = dict(vocab_size=50, num_layers=2, num_heads=2, embed_dim=32, mlp_dim=64,
                scan_layers=False)
    return gpt.Model(**{**base, **kw})


def loss_of(model, params, batch):
    cfg = ml_collections.ConfigDict({'z_loss': 0.0})
    loss = jax.jit(lambda p, b: autoregressive.loss_fn(model.apply, p, b, None, cfg,
                                                       train=False)[0])
    return float(loss(params, jax.tree.map(jnp.asarray, batch)))


def forward(model, params, batch, packed=True):
    """logits of batch['inputs'], with its positions and segment ids when `packed`."""
    keys = ('positions', 'segment_ids') if packed else ()
    fn = jax.jit(lambda p, x, extra: model.apply({'params': p}, x, **extra))
    return np.asarray(fn(params, jnp.asarray(batch['inputs']),
                         {k: jnp.asarray(batch[k]) for k in keys}))


@pytest.mark.parametrize('variant', list(MODELS))
def test_packed_equals_unpacked(variant):
    """A packed row (segment attention, positions restarting) computes what each of its
    examples computes alone: the same logits per example and the same loss."""
    rng = np.random.default_rng(2)
    examples = random_examples(rng, 6)
    packed = conditional.make_rows(examples, [[0, 1, 2], [3, 4, 5]], 32, 0, packed=True)
    alone = conditional.make_rows(examples, [[j] for j in range(6)], 32, 0, packed=False)
    model = tiny_model(**MODELS[variant])
    params = model.init(jax.random.key(0), jnp.asarray(alone['inputs'][:1]))['params']
    np.testing.assert_allclose(loss_of(model, params, packed), loss_of(model, params, alone),
                               rtol=1e-5)
    logits_packed = forward(model, params, packed)
    logits_alone = forward(model, params, alone, packed=False)
    for j in range(6):
        row, segment = divmod(j, 3)
        at = packed['segment_ids'][row] == segment + 1
        n = at.sum()
        np.testing.assert_allclose(logits_packed[row][at], logits_alone[j, :n], atol=2e-5)
    # Without segment ids example 4 (the second of row 1) would see example 3 before it.
    at = packed['segment_ids'][1] == 2
    without = forward(model, params, packed, packed=False)
    assert not np.allclose(without[1][at], logits_alone[4, :at.sum()], atol=1e-3)


def test_one_segment_equals_the_plain_forward():
    model = tiny_model(attention_blocks=2)
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, 50, (2, 32)), jnp.int32)
    params = model.init(jax.random.key(1), tokens)['params']
    plain = model.apply({'params': params}, tokens)
    seg = model.apply({'params': params}, tokens, segment_ids=jnp.ones((2, 32), jnp.int32),
                      positions=jnp.broadcast_to(jnp.arange(32), (2, 32)))
    np.testing.assert_allclose(seg, plain, atol=1e-6)


def test_scanned_decode_equals_the_full_forward():
    """The scanned layer stack (which now also broadcasts segment_ids) still decodes."""
    model = tiny_model(scan_layers=True)
    tokens = jnp.asarray(np.random.default_rng(5).integers(0, 50, (2, 8)), jnp.int32)
    params = model.init(jax.random.key(2), tokens)['params']
    logits, _ = jax.jit(lambda p, t: model.apply(
        {'params': p}, t, jnp.broadcast_to(jnp.arange(8), (2, 8)), gpt.init_cache(model, 2, 8),
        method='decode'))(params, tokens)
    np.testing.assert_allclose(logits, forward(model, params, {'inputs': tokens}, False),
                               atol=1e-5)


def test_prompt_tokens_have_zero_gradient():
    """d loss / d logits is mask * (softmax - onehot) / mask.sum() (NumPy): exactly zero at
    prompt positions; changing prompt targets changes neither the loss nor any gradient."""
    rng = np.random.default_rng(4)
    examples = random_examples(rng, 6)
    batch = conditional.make_rows(examples, [[0, 1, 2], [3, 4, 5]], 32, 0, packed=True)
    model = tiny_model()
    params = model.init(jax.random.key(0), jnp.asarray(batch['inputs'][:1]))['params']
    logits = forward(model, params, batch)
    probe = jnp.zeros(logits.shape)

    def loss_with_probe(probe, batch):
        def apply(v, x, **kw):  # flax apply with mutable=[...]: (logits, collections)
            logits, sown = model.apply(v, x, **kw)
            return logits + probe, sown

        cfg = ml_collections.ConfigDict({'z_loss': 0.0})
        return autoregressive.loss_fn(apply, params, batch, None, cfg, train=False)[0].value()

    got = np.asarray(jax.jit(jax.grad(loss_with_probe))(probe, jax.tree.map(jnp.asarray, batch)))
    mask = batch['mask']
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = (p - np.eye(50)[batch['targets']]) * mask[..., None] / mask.sum()
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert np.all(got[mask == 0] == 0) and np.abs(got[mask == 1]).min() > 0

    changed = dict(batch, targets=np.where(mask == 0, rng.integers(0, 50, mask.shape),
                                           batch['targets']).astype(np.int32))
    assert not np.array_equal(changed['targets'], batch['targets'])
    grad = jax.jit(jax.grad(lambda prm, b: autoregressive.loss_fn(
        model.apply, prm, b, None, ml_collections.ConfigDict({'z_loss': 0.0}))[0].value()))
    grads = [grad(params, jax.tree.map(jnp.asarray, b)) for b in (batch, changed)]
    jax.tree.map(np.testing.assert_array_equal, *grads)
    assert loss_of(model, params, batch) == loss_of(model, params, changed)


# ----------------------------------------------------------------------------- generation metrics

def test_exact_match_and_chrf():
    import sacrebleu

    hyps, refs = ['foo', ' bar ', 'baz'], [' foo', 'bar', 'qux']
    assert generation.exact_match(hyps, refs) == pytest.approx(2 / 3)
    stripped = ['foo', 'bar', 'baz'], ['foo', 'bar', 'qux']
    assert generation.chrf(hyps, refs) == pytest.approx(
        sacrebleu.corpus_chrf(stripped[0], [stripped[1]]).score)
    assert generation.chrf(['same text'], ['same text']) == pytest.approx(100.0)
    assert generation.chrf(['aaaa'], ['zzzz']) == 0.0
    hyps = ['def get_value(self)', 'return x + 1', 'pass']
    refs = ['def get_values(self)', 'return x - 1', 'raise']
    assert generation.chrf(hyps, refs) == pytest.approx(
        sacrebleu.corpus_chrf(hyps, [refs]).score)
    with pytest.raises(ValueError):
        generation.exact_match(['a'], ['a', 'b'])


def test_response_texts_cut_at_eos():
    tokens = np.array([[ord('a'), ord('b'), 0, 0], [ord('c'), ord('d'), ord('e'), ord('f')]])
    assert generation.response_texts(BYTES, tokens, [3, 4]) == ['ab', 'cdef']


def sft_config(tfds_dir):
    """experiments/sft.py with a 2-layer, 32-wide GPT and 6 generated validation prompts."""
    cfg = config_lib.load(os.path.join(REPO, 'experiments/sft.py') + ':seq=128,batch=4,steps=4')
    cfg.model.num_layers, cfg.model.embed_dim, cfg.model.mlp_dim = 2, 32, 64
    cfg.data.data_dir = tfds_dir
    cfg.evals.gen.num_examples = 6
    return experiment.resolve_auto(cfg)


def test_generation_evaluator_against_uncached_greedy(tfds_dir, name_examples, tmp_path):
    s = run_lib.setup(sft_config(tfds_dir), str(tmp_path))
    params = s.init().params
    evaluator = s.evaluators['gen'][1]
    with jax.set_mesh(s.mesh), nn.logical_axis_rules(s.rules):  # as in training
        metrics = evaluator.run(params)
    rows = read_json(tmp_path / 'generations_gen.json')
    assert len(rows) == 6 and set(metrics) == {'gen/exact_match', 'gen/chrf', 'gen/num_examples'}
    assert metrics['gen/num_examples'] == 6
    hyps, refs = [r['response'] for r in rows], [r['reference'] for r in rows]
    assert metrics['gen/exact_match'] == generation.exact_match(hyps, refs)
    assert metrics['gen/chrf'] == pytest.approx(generation.chrf(hyps, refs))
    prompt, ref = evaluator.examples[0]
    assert rows[0]['prompt'] == BYTES.decode(prompt) and rows[0]['reference'] == ref
    assert rows[0]['prompt'].endswith(conditional_task.NAME_CUE)
    ids = gen_lib.generate_uncached(s.model, params, prompt,
                                    max_new_tokens=evaluator.max_new_tokens)
    ids = ids[:list(ids).index(0)] if 0 in ids else ids  # up to the eos
    assert hyps[0] == BYTES.decode(ids)


def test_generation_evaluator_uses_a_model_family_generate(tfds_dir, name_examples, tmp_path,
                                                           monkeypatch):
    """An encoder-decoder's module may bring its own `generate`; the evaluator calls it."""
    family = types.ModuleType('fake_seq2seq')
    calls = []

    def generate(model, params, prompts, *, max_new_tokens, eos_id):
        calls.append(len(prompts))
        out = np.zeros((len(prompts), max_new_tokens), np.int32)
        out[:, :4] = [ord(' '), ord('r'), ord('u'), ord('n')]
        return out, np.full(len(prompts), 5)

    family.generate = generate
    family.Model = type('Model', (), {'__module__': 'fake_seq2seq'})
    monkeypatch.setitem(sys.modules, 'fake_seq2seq', family)
    s = run_lib.setup(sft_config(tfds_dir), str(tmp_path))
    ctx = s.eval_context
    ctx.model = family.Model()
    ev = generation.Evaluator(ml_collections.ConfigDict(dict(num_examples=6, batch_size=4)),
                              ctx, name='g')
    refs = [r for _, r in ev.examples]
    got = ev.run(None)
    assert calls == [4, 2]
    assert got['g/exact_match'] == np.mean([r.strip() == 'run' for r in refs])


def test_config_errors(tfds_dir, name_examples, tmp_path):
    with pytest.raises(ConfigError, match='task='):
        config_lib.load(os.path.join(REPO, 'experiments/sft.py') + ':task=nope')
    with pytest.raises(ConfigError, match='data.task'):
        conditional.build_pipeline(data_config(tfds_dir, task='nope'), split='train',
                                   batch_size=2, seed=0)
    with pytest.raises(ConfigError, match='data.name'):
        conditional.prepare(data_config(tfds_dir, name='lm1b'))
    with pytest.raises(ConfigError, match="split 'test'"):
        conditional.build_pipeline(data_config(tfds_dir), split='test', batch_size=2, seed=0)
    with pytest.raises(ConfigError, match='no example fits'):
        conditional.build_pipeline(data_config(tfds_dir, seq_len=4), split='validation',
                                   batch_size=2, seed=0)
    bad = sft_config(tfds_dir)
    bad.evals.gen.num_examples = -1
    with pytest.raises(ConfigError, match='evals.gen.num_examples'):
        run_lib.setup(bad, str(tmp_path))
    lm = sft_config(tfds_dir)
    lm.data = ml_collections.ConfigDict(dict(pipeline='lm', name='pystdlib', data_dir=tfds_dir,
                                             seq_len=32, val_split='validation',
                                             train_split='train'))
    with pytest.raises(ConfigError, match="has no prompts"):
        run_lib.setup(lm, str(tmp_path))
    (tmp_path / 'vit').mkdir()
    (tmp_path / 'vit' / 'config.json').write_text(json.dumps({'model': {'name': 'vit'}}))
    with pytest.raises(ConfigError, match='SFT needs a GPT'):
        config_lib.load(os.path.join(REPO, 'experiments/sft.py') + f':init={tmp_path / "vit"}')


def test_tokenizer_with_a_bos_template(tmp_path):
    """A BOS-adding template puts the BOS before the prompt only; one that appends tokens
    after the text is refused."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    from jaxbig.data.text.tokenizers import FileTokenizer

    vocab = {'<s>': 0, '</s>': 1, 'a': 2, 'b': 3, ' ': 4}
    for name, template, ok in (('bos', '<s> $A', True), ('eos', '$A </s>', False)):
        tok = Tokenizer(models.WordLevel(vocab, unk_token='a'))
        tok.pre_tokenizer = pre_tokenizers.Split('', 'isolated')
        tok.post_processor = processors.TemplateProcessing(
            single=template, special_tokens=[('<s>', 0), ('</s>', 1)])
        tok.save(str(tmp_path / f'{name}.json'))
        ft = FileTokenizer(str(tmp_path / f'{name}.json'), eos_id=1)
        if ok:
            p, r = conditional.encode_pair(ft, 'ab', 'ba')
            np.testing.assert_array_equal(p, [0, 2, 3])
            np.testing.assert_array_equal(r, [3, 2, 1])
        else:
            with pytest.raises(ConfigError, match='after the text'):
                conditional.encode_pair(ft, 'ab', 'ba')


# ----------------------------------------------------------------------------- the CLI

TINY_SFT = ['--config.model.num_layers=2', '--config.model.embed_dim=64',
            '--config.model.num_heads=4', '--config.model.mlp_dim=128',
            '--config.train.log_every=4', '--config.evals.gen.num_examples=8',
            '--config.evals.val.num_examples=32']


def test_sft_cli_trains_evaluates_generates(tfds_dir, name_examples, tmp_path):
    workdir = str(tmp_path / 'sft')
    run_cli('train', '--config', 'experiments/sft.py:steps=16,batch=16,seq=128',
            '--workdir', workdir, *TINY_SFT, '--config.optimizer.lr=1e-2')
    loss = metric_series(workdir)
    assert loss[16] < 0.8 * loss[4], loss
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        final = {k: v for line in f if (r := json.loads(line))['step'] == 16 for k, v in r.items()}
    assert 0 <= final['gen/exact_match'] <= 1 and 0 <= final['gen/chrf'] <= 100
    assert final['val/loss'] < 0.9 * np.log(256)  # below the uniform byte's 5.55 nats
    assert len(read_json(os.path.join(workdir, 'generations_gen.json'))) == 8
    out = run_cli('generate', '--workdir', workdir, '--prompt',
                  'def <name>(self):\n    return self.x\n# name:', '--max-new-tokens', '8')
    assert out.stdout.startswith('def <name>(self):') and len(out.stdout) > 40
    bad = run_cli('train', '--config', 'experiments/sft.py:task=nope', '--workdir',
                  str(tmp_path / 'bad'), check=False)
    assert bad.returncode == 2 and 'jaxbig: error:' in bad.stderr and 'task=' in bad.stderr


@pytest.mark.slow
def test_sft_from_an_lm_workdir(tfds_dir, name_examples, tmp_path):
    """init=RUN takes over the LM's model section and tokenizer and loads its params (with
    every parameter frozen the SFT run's params are the LM's, bit for bit)."""
    lm = str(tmp_path / 'lm')
    run_cli('train', '--config', 'experiments/lm.py:steps=8,batch=8,seq=64', '--workdir', lm,
            *TINY_SFT[:4], '--config.train.log_every=4')
    sft = str(tmp_path / 'sft')
    run_cli('train', '--config', f'experiments/sft.py:init={lm},steps=4,batch=8,seq=128',
            '--workdir', sft, '--config.train.log_every=4', '--config.evals.gen.num_examples=4',
            '--config.evals.val.num_examples=8', "--config.optimizer.freeze=['.*']")
    a, b = run_lib.load_run(lm), run_lib.load_run(sft)
    assert b.config.model.to_dict() == a.config.model.to_dict()
    assert b.config.init_from.path == lm
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
