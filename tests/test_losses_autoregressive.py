"""Next-token loss against an independent NumPy reference."""
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxbig.losses import autoregressive
from jaxbig.aggregate import values


def numpy_lm_loss(logits, targets, mask):
    logits = logits.astype(np.float64)
    m = logits.max(-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
    b, t = targets.shape
    nll = -logp[np.arange(b)[:, None], np.arange(t)[None, :], targets]
    acc = (logits.argmax(-1) == targets)
    return (nll * mask).sum() / mask.sum(), (acc * mask).sum() / mask.sum()


def test_matches_numpy_with_padding():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 7, 11)).astype(np.float32) * 3
    targets = rng.integers(0, 11, size=(3, 7))
    mask = np.ones((3, 7), np.float32)
    mask[0, 4:] = 0
    mask[2, 1:] = 0
    stats = values(autoregressive.token_cross_entropy(jnp.asarray(logits), jnp.asarray(targets),
                                                      mask))
    assert float(stats['targets']) == mask.sum()
    loss, acc = numpy_lm_loss(logits, targets, mask)
    np.testing.assert_allclose(stats['loss'], loss, rtol=1e-5)
    np.testing.assert_allclose(stats['accuracy'], acc, rtol=1e-6)
    # Padded positions do not matter at all.
    logits2 = logits.copy()
    logits2[0, 5] += 100.0
    stats2 = values(autoregressive.token_cross_entropy(jnp.asarray(logits2), jnp.asarray(targets),
                                                       mask))
    np.testing.assert_allclose(stats2['loss'], stats['loss'], rtol=1e-6)


def test_loss_fn_z_loss_and_metrics():
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(2, 5, 7)), jnp.float32)
    batch = {'inputs': jnp.zeros((2, 5), jnp.int32),
             'targets': jnp.asarray(rng.integers(0, 7, size=(2, 5))),
             'mask': jnp.ones((2, 5))}
    apply_fn = lambda variables, inputs, train, rngs, mutable: (logits.astype(jnp.bfloat16), {})
    cfg = ml_collections.ConfigDict({'name': 'autoregressive', 'z_loss': 1e-2})
    total, metrics = values(autoregressive.loss_fn(apply_fn, {}, batch, {}, cfg))
    lf = np.asarray(logits.astype(jnp.bfloat16).astype(jnp.float32), np.float64)
    log_z = np.log(np.exp(lf).sum(-1))
    nll, _ = numpy_lm_loss(lf, np.asarray(batch['targets']), np.ones((2, 5)))
    np.testing.assert_allclose(metrics['loss'], nll, rtol=1e-5)
    np.testing.assert_allclose(total, nll + 1e-2 * np.mean(log_z ** 2), rtol=1e-5)
    np.testing.assert_allclose(metrics['perplexity'], np.exp(nll), rtol=1e-5)


def test_uniform_logits_give_log_vocab():
    stats = values(autoregressive.token_cross_entropy(jnp.zeros((1, 4, 256)),
                                                      jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4))))
    np.testing.assert_allclose(stats['loss'], np.log(256), rtol=1e-6)


def test_chunked_statistics_and_gradients_equal_the_whole_sequence():
    """loss.logits_chunk: the head applied 3 positions at a time (7 = 3 + 3 + 1 padded) gives
    the NumPy reference's loss and the unchunked gradient w.r.t. the head and features."""
    import jax

    rng = np.random.default_rng(1)
    features = jnp.asarray(rng.normal(size=(2, 7, 5)), jnp.float32)
    head = jnp.asarray(rng.normal(size=(5, 11)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 11, size=(2, 7)))
    mask = np.ones((2, 7), np.float32)
    mask[1, 2:] = 0  # uneven rows

    def loss(head, features, chunk):
        fn = lambda f: f @ head  # noqa: E731
        stats = (autoregressive.chunked_token_cross_entropy(fn, features, targets, mask, chunk)
                 if chunk else autoregressive.token_cross_entropy(fn(features), targets, mask))
        return stats['loss'].value(), stats

    (whole, ref), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
        head, features, 0)
    (chunked, got), chunk_grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
        head, features, 3)
    want, acc = numpy_lm_loss(np.asarray(features @ head), np.asarray(targets), mask)
    np.testing.assert_allclose(chunked, want, rtol=1e-5)
    for key in ('loss', 'accuracy', 'log_z_sq', 'targets'):
        np.testing.assert_allclose(values(got)[key], values(ref)[key], rtol=1e-6)
    assert float(values(got)['targets']) == mask.sum()
    for g, r in zip(chunk_grads, grads):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-7)


def test_logits_chunk_is_refused_for_a_model_without_a_separate_head():
    import pytest

    from jaxbig import config as config_lib
    from jaxbig.config import ConfigError

    config = config_lib.load('experiments/lstm_lm.py')
    config.loss.logits_chunk = 64
    with pytest.raises(ConfigError, match="logits_chunk=64.*model.name='gpt'.*'lstm"):
        autoregressive.check(config)
    config.loss.logits_chunk = -1
    with pytest.raises(ConfigError, match='logits_chunk=-1'):
        autoregressive.check(config)
    config = config_lib.load('experiments/lm.py')
    config.loss.logits_chunk = 64
    autoregressive.check(config)  # the GPT has one


def test_train_refuses_logits_chunk_on_an_lstm_before_writing(tmp_path, capsys):
    """Through the CLI (in-process): exit 2, one line, no workdir."""
    from jaxbig import cli

    workdir = tmp_path / 'run'
    code = cli.main(['train', '--config', 'experiments/lstm_lm.py:steps=2', '--workdir',
                     str(workdir), '--config.loss.logits_chunk=8'])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and 'loss.logits_chunk=8' in err[0]
    assert not workdir.exists()
