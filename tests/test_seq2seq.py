"""The T5-shaped encoder-decoder (jaxbig/models/t5.py), its loss (losses/seq2seq.py) and data
(data/pipelines/seq2seq.py): relative-position buckets vs NumPy, cached generation vs uncached
teacher-forced argmax decoding, encoder padding, the masked loss vs NumPy, the batches, a
real `experiments/seq2seq.py` run through the CLI (train, generate, eval) and the errors."""
import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import REPO, metric_series, run_cli

from jaxbig import config as config_lib
from jaxbig.config import ConfigError
from jaxbig.data.builders import conditional_task
from jaxbig.data.pipelines import conditional
from jaxbig.data.pipelines import seq2seq as seq2seq_data
from jaxbig.data.text.tokenizers import ByteTokenizer
from jaxbig.losses import seq2seq as seq2seq_loss
from jaxbig.models import t5

BYTES = ByteTokenizer()


def numpy_buckets(rel, bidirectional, num_buckets, max_distance):
    """T5's bucket formula (Raffel et al.; Mesh TensorFlow), written out in NumPy."""
    rel = np.asarray(rel, np.int64)
    out = np.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        out += (rel > 0) * num_buckets
        n = np.abs(rel)
    else:
        n = np.maximum(-rel, 0)
    exact = num_buckets // 2
    with np.errstate(divide='ignore'):
        log_ratio = np.log(n.astype(np.float32) / np.float32(exact)) / np.float32(
            math.log(max_distance / exact))
    large = exact + np.floor(np.nan_to_num(log_ratio, neginf=0.0) * np.float32(
        num_buckets - exact)).astype(np.int64)
    return out + np.where(n < exact, n, np.minimum(large, num_buckets - 1))


@pytest.mark.parametrize('buckets,distance', [(32, 128), (16, 32), (8, 20), (64, 256)])
@pytest.mark.parametrize('bidirectional', [True, False])
def test_relative_position_buckets_match_numpy(buckets, distance, bidirectional):
    rel = np.arange(-1500, 1500)
    got = np.asarray(t5.relative_position_bucket(rel, bidirectional=bidirectional,
                                                 num_buckets=buckets, max_distance=distance))
    want = numpy_buckets(rel, bidirectional, buckets, distance)
    np.testing.assert_array_equal(got, want)
    assert got.min() == 0 and got.max() == buckets - 1
    if not bidirectional:  # every key after the query shares bucket 0
        assert set(got[rel > 0].tolist()) == {0}


# ----------------------------------------------------------------------------- the model

VARIANTS = {
    'gated_gelu_tied': dict(),
    'relu_untied_scanned': dict(feed_forward='relu', tie_embeddings=False, scan_layers=True),
    'head_dim_3_decoder_layers': dict(head_dim=12, num_decoder_layers=3, relative_buckets=8,
                                      relative_max_distance=12),
}


def tiny(**kw):
    base = dict(vocab_size=40, num_layers=2, num_heads=2, embed_dim=32, mlp_dim=48)
    return t5.Model(**{**base, **kw})


def init(model, seed=0):
    """Params with every leaf redrawn N(0, 0.3^2): T5's own init makes the residual stream
    (and the tied head's argmax) echo the input token, which hides decoding bugs."""
    enc, mask = jnp.zeros((1, 6), jnp.int32), jnp.ones((1, 6), jnp.int32)
    params = nn.unbox(model.init(jax.random.key(seed), enc, mask,
                                 jnp.zeros((1, 3), jnp.int32))['params'])
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 100), len(leaves))
    return jax.tree.unflatten(tree, [0.3 * jax.random.normal(k, x.shape)
                                     for k, x in zip(keys, leaves)])


def prompts(rng, lengths=(9, 5)):
    return [rng.integers(1, 40, n).astype(np.int32) for n in lengths]


def uncached_greedy(model, params, prompts, n):
    """The full teacher-forced forward on the tokens so far at every step; argmax. Prompts
    right-padded into one batch (test_encoder_padding_changes_no_output: the same)."""
    enc, mask = (jnp.asarray(x) for x in t5.right_pad(prompts))
    forward = jax.jit(lambda d: model.apply({'params': params}, enc, mask, d))
    dec = np.zeros((len(prompts), n + 1), np.int32)  # causal: later zeros do not matter
    dec[:, 0] = model.decoder_start_id
    for i in range(n):
        dec[:, i + 1] = np.argmax(np.asarray(forward(dec))[:, i], -1)
    return dec[:, 1:]


SLOW_VARIANTS = [pytest.param(v, marks=pytest.mark.slow) if v != 'gated_gelu_tied' else v
                 for v in VARIANTS]  # each compiles two decoders (~25 s): one stays default


@pytest.mark.parametrize('variant', SLOW_VARIANTS)
def test_cached_generation_equals_uncached_argmax(variant):
    model = tiny(**VARIANTS[variant])
    params = init(model, seed=1)
    ps = prompts(np.random.default_rng(2))
    out, lengths = t5.generate(model, params, ps, max_new_tokens=10)
    assert out.shape == (2, 10) and list(lengths) == [10, 10]
    np.testing.assert_array_equal(out, uncached_greedy(model, params, ps, 10))
    assert len({tuple(r) for r in out}) == 2  # the rows did not collapse to one answer


def test_generation_stops_at_eos_and_samples():
    model = tiny()
    params = init(model, seed=3)
    ps = prompts(np.random.default_rng(4))
    greedy, _ = t5.generate(model, params, ps, max_new_tokens=8)
    eos = int(greedy[0, 2])  # pretend the third greedy token ends the response
    out, lengths = t5.generate(model, params, ps, max_new_tokens=8, eos_id=eos)
    first = list(greedy[0]).index(eos)
    assert lengths[0] == first + 1
    np.testing.assert_array_equal(out[0, :first + 1], greedy[0, :first + 1])
    assert np.all(out[0, first + 1:] == eos)  # filled after the row finished
    a, _ = t5.generate(model, params, ps, max_new_tokens=8, temperature=1.0, seed=0)
    b, _ = t5.generate(model, params, ps, max_new_tokens=8, temperature=1.0, seed=0)
    c, _ = t5.generate(model, params, ps, max_new_tokens=8, temperature=1.0, seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    top1, _ = t5.generate(model, params, ps, max_new_tokens=8, temperature=1.0, top_k=1)
    np.testing.assert_array_equal(top1, greedy)  # top-1 sampling is greedy


@pytest.mark.parametrize('variant', list(VARIANTS))
def test_encoder_padding_changes_no_output(variant):
    model = tiny(**VARIANTS[variant])
    params = init(model, seed=5)
    rng = np.random.default_rng(6)
    enc, dec = rng.integers(1, 40, (2, 7)), rng.integers(1, 40, (2, 5))
    mask = np.array([[1] * 7, [1] * 4 + [0] * 3])
    apply = jax.jit(lambda e, m, d: model.apply({'params': params}, e, m, d))
    base = np.asarray(apply(enc, mask, dec))
    padded = np.concatenate([enc, rng.integers(1, 40, (2, 6))], 1)  # junk under mask 0
    more = np.asarray(apply(padded, np.pad(mask, ((0, 0), (0, 6))), dec))
    np.testing.assert_allclose(more, base, atol=1e-5)
    junk = enc.copy()
    junk[1, 4:] = rng.integers(1, 40, 3)
    np.testing.assert_allclose(np.asarray(apply(junk, mask, dec)), base, atol=1e-5)
    alone = np.asarray(apply(enc[1:, :4], mask[1:, :4], dec[1:]))
    np.testing.assert_allclose(alone[0], base[1], atol=1e-5)


# ----------------------------------------------------------------------------- the loss

def test_loss_counts_only_masked_positions():
    model = tiny()
    params = init(model, seed=7)
    rng = np.random.default_rng(8)
    batch = dict(enc_tokens=rng.integers(1, 40, (3, 6)).astype(np.int32),
                 enc_mask=np.ones((3, 6), np.int32),
                 dec_inputs=rng.integers(1, 40, (3, 5)).astype(np.int32),
                 dec_targets=rng.integers(1, 40, (3, 5)).astype(np.int32),
                 dec_mask=np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]],
                                   np.float32))
    cfg = ml_collections.ConfigDict({'z_loss': 0.0})
    loss_fn = jax.jit(lambda p, b: seq2seq_loss.loss_fn(model.apply, p, b, None, cfg,
                                                        train=False))
    loss, metrics = loss_fn(params, batch)
    logits = np.asarray(model.apply({'params': params}, batch['enc_tokens'], batch['enc_mask'],
                                    batch['dec_inputs'], batch['dec_mask']), np.float64)
    log_p = logits - logits.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_p, batch['dec_targets'][..., None], -1)[..., 0]
    m = batch['dec_mask']
    np.testing.assert_allclose(float(loss), (nll * m).sum() / m.sum(), rtol=1e-5)
    correct = logits.argmax(-1) == batch['dec_targets']
    np.testing.assert_allclose(float(metrics['token_accuracy']), (correct * m).sum() / m.sum(),
                               rtol=1e-6)
    changed = dict(batch, dec_targets=np.where(m == 0, 0, batch['dec_targets']).astype(np.int32))
    assert float(loss_fn(params, changed)[0]) == float(loss)  # masked-out targets: no effect
    rows = [np.all(correct[i][m[i] > 0]) for i in range(3)]
    assert float(metrics['sequence_accuracy']) == pytest.approx(np.mean(rows))


def test_sequence_accuracy_against_numpy():
    logits = np.full((3, 4, 5), -1.0, np.float32)
    targets = np.array([[1, 2, 3, 0], [1, 2, 3, 0], [4, 4, 4, 4]])
    for row, t in zip(logits, [[1, 2, 3, 4], [1, 2, 0, 0], [4, 4, 4, 4]]):
        row[np.arange(4), t] = 1.0  # argmax
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]], np.float32)
    # row 0 right where counted, row 1 wrong at 2, row 2 has nothing counted
    assert float(seq2seq_loss.sequence_accuracy(logits, targets, mask)) == 0.5


# ----------------------------------------------------------------------------- the data

def data_config(tfds_dir, **overrides):
    return ml_collections.ConfigDict({**seq2seq_data.section('name', 128, 32),
                                      'data_dir': tfds_dir, **overrides})


@pytest.fixture(scope='session')
def prepared(tfds_dir):
    seq2seq_data.prepare(data_config(tfds_dir))
    return tfds_dir


def test_rows_shift_the_targets_right():
    examples = [(np.array([5, 6, 7], np.int32), np.array([8, 9, 0], np.int32)),
                (np.array([3], np.int32), np.array([0], np.int32))]
    b = seq2seq_data.make_rows(examples, [0, 1], 4, 5, start_id=2)
    np.testing.assert_array_equal(b['enc_tokens'], [[5, 6, 7, 0], [3, 0, 0, 0]])
    np.testing.assert_array_equal(b['enc_mask'], [[1, 1, 1, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(b['dec_inputs'], [[2, 8, 9, 0, 0], [2, 0, 0, 0, 0]])
    np.testing.assert_array_equal(b['dec_targets'], [[8, 9, 0, 0, 0], [0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(b['dec_mask'], [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])


def test_pipeline_batches(prepared):
    cfg = data_config(prepared)
    one = seq2seq_data.build_pipeline(cfg, split='train', batch_size=4, seed=3)
    again = seq2seq_data.build_pipeline(cfg, split='train', batch_size=4, seed=3)
    halves = [seq2seq_data.build_pipeline(cfg, split='train', batch_size=4, seed=3,
                                          process_index=p, process_count=2) for p in (0, 1)]
    for i in (5, 0):  # batch i is a function of (seed, i), split over processes
        a, b = one.get_batch(i), again.get_batch(i)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
            np.testing.assert_array_equal(a[k], np.concatenate([h.get_batch(i)[k]
                                                                for h in halves]))
    batch = one.get_batch(1)
    assert batch['enc_tokens'].shape == (4, 128) and batch['dec_targets'].shape == (4, 32)
    for row, (j,) in enumerate(one.row_groups(1)):
        prompt, response = one.examples[j]
        n = int(batch['enc_mask'][row].sum())
        np.testing.assert_array_equal(batch['enc_tokens'][row, :n], prompt)
        assert BYTES.decode(prompt).endswith(conditional_task.NAME_CUE)
        m = int(batch['dec_mask'][row].sum())
        np.testing.assert_array_equal(batch['dec_targets'][row, :m], response)
        assert BYTES.decode(batch['dec_targets'][row, :m - 1]) == one.references[j]
        assert batch['dec_targets'][row, m - 1] == BYTES.eos_id
    assert all(len(r) <= 32 for _, r in one.examples)
    sft = conditional.build_pipeline(ml_collections.ConfigDict(
        {**data_config(prepared), 'pack': True}), split='train', batch_size=4, seed=3)
    kept = {tuple(p) for p, r in sft.examples if len(r) <= 32}
    assert kept == {tuple(p) for p, _ in one.examples}  # SFT's examples, minus long responses
    assert one.num_skipped == sft.num_skipped + len(sft.examples) - len(one.examples)


# ----------------------------------------------------------------------------- errors

def test_config_errors(prepared):
    for kw, match in ((dict(feed_forward='gated-tanh'), "feed_forward='gated-tanh'"),
                      (dict(embed_dim=30, num_heads=4), 'not divisible'),
                      (dict(decoder_start_id=99), 'decoder_start_id=99'),
                      (dict(relative_buckets=2), 'relative_buckets=2')):
        with pytest.raises(ConfigError, match=match):
            init(tiny(**kw))
    with pytest.raises(ConfigError, match='task='):
        config_lib.load(os.path.join(REPO, 'experiments/seq2seq.py') + ':task=nope')
    with pytest.raises(ConfigError, match='size='):
        config_lib.load(os.path.join(REPO, 'experiments/seq2seq.py') + ':size=huge')
    with pytest.raises(ConfigError, match='data.target_len=1: no response'):
        seq2seq_data.build_pipeline(data_config(prepared, target_len=1), split='train',
                                    batch_size=2, seed=0)
    with pytest.raises(ConfigError, match='data.decoder_start_id=300'):
        seq2seq_data.build_pipeline(data_config(prepared, decoder_start_id=300),
                                    split='train', batch_size=2, seed=0)
    with pytest.raises(ConfigError, match="split 'test'"):
        seq2seq_data.build_pipeline(data_config(prepared), split='test', batch_size=2, seed=0)


# ----------------------------------------------------------------------------- the CLI

TINY = ['--config.model.num_layers=1', '--config.model.embed_dim=64',
        '--config.model.mlp_dim=128', '--config.train.log_every=4',
        '--config.evals.gen.num_examples=4', '--config.evals.val.num_examples=16',
        '--config.optimizer.lr=1e-2']


@pytest.mark.slow
def test_seq2seq_cli_trains_generates_evaluates(prepared, tmp_path):
    workdir = str(tmp_path / 's2s')
    run_cli('train', '--config', 'experiments/seq2seq.py:steps=16,batch=16,seq=128,target=32',
            '--workdir', workdir, *TINY)
    loss = metric_series(workdir)
    assert loss[16] < 0.8 * loss[4], loss
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        final = {k: v for line in f if (r := json.loads(line))['step'] == 16
                 for k, v in r.items()}
    assert 0 <= final['gen/exact_match'] <= 1 and 0 <= final['gen/chrf'] <= 100
    assert final['val/loss'] < 0.9 * np.log(256)
    out = run_cli('generate', '--workdir', workdir, '--temperature', '0', '--prompt',
                  'def <name>(self):\n    return self.x\n# name:', '--max-new-tokens', '8')
    assert 0 < len(out.stdout) <= 10 and 'def <name>' not in out.stdout  # the response only
    two = run_cli('generate', '--workdir', workdir, '--prompt', 'a', '--prompt', 'bc',
                  '--max-new-tokens', '4', '--top-k', '5')
    assert two.stdout.count('--- prompt:') == 2
    ev = run_cli('eval', '--workdir', workdir)
    assert 'gen/chrf' in ev.stdout and 'val/loss' in ev.stdout
    bad = run_cli('train', '--config', 'experiments/seq2seq.py', '--workdir',
                  str(tmp_path / 'bad'), '--config.model.feed_forward=swish-x', check=False)
    assert bad.returncode == 2 and 'jaxbig: error:' in bad.stderr
    line = next(x for x in bad.stderr.splitlines() if x.startswith('jaxbig: error:'))
    assert "model.feed_forward='swish-x'" in line


def test_tokens_per_batch_counts_encoder_and_decoder_tokens():
    from jaxbig.train import tokens_per_batch

    batch = dict(enc_tokens=np.zeros((4, 10), np.int32), enc_mask=np.ones((4, 10), np.float32),
                 dec_inputs=np.zeros((4, 6), np.int32), dec_targets=np.zeros((4, 6), np.int32))
    assert tokens_per_batch(batch) == 4 * 10 + 4 * 6
    assert tokens_per_batch(dict(inputs=np.zeros((2, 8), np.int32))) == 16
    assert tokens_per_batch(dict(image=np.zeros((2, 8, 8, 3), np.float32))) == 0
