"""NT-Xent, CLIP and SigLIP losses against independent NumPy references, plus gradients
against finite differences."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxbig.losses import contrastive, multimodal

# Compiled once per shape: much faster on a loaded CPU than op-by-op dispatch.
nt_xent = jax.jit(contrastive.nt_xent, static_argnums=2)
clip_loss = jax.jit(multimodal.clip_loss)
siglip_loss = jax.jit(multimodal.siglip_loss)


def np_unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def np_nt_xent(z1, z2, tau):
    """Row by row, straight from the SimCLR paper's definition (float64)."""
    z = np_unit(np.concatenate([z1, z2]).astype(np.float64))
    n2, total = len(z), 0.0
    for i in range(n2):
        p = (i + n2 // 2) % n2
        others = [k for k in range(n2) if k != i]
        denom = sum(math.exp(z[i] @ z[k] / tau) for k in others)
        total += -math.log(math.exp(z[i] @ z[p] / tau) / denom)
    return total / n2


def np_clip(x, y, t):
    logits = math.exp(t) * x.astype(np.float64) @ y.T.astype(np.float64)
    n = len(x)
    row = [-logits[i, i] + math.log(np.exp(logits[i]).sum()) for i in range(n)]
    col = [-logits[i, i] + math.log(np.exp(logits[:, i]).sum()) for i in range(n)]
    return 0.5 * (np.mean(row) + np.mean(col))


def np_siglip(x, y, t, b):
    logits = math.exp(t) * x.astype(np.float64) @ y.T.astype(np.float64) + b
    n, total = len(x), 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            total += math.log1p(math.exp(-z * logits[i, j]))  # -log sigmoid(z * l)
    return total / n


@pytest.mark.parametrize('n', [1, 5, 16])
@pytest.mark.parametrize('tau', [0.05, 0.5])
def test_nt_xent_matches_numpy(n, tau):
    rng = np.random.default_rng(n * 100 + int(tau * 100))
    z1, z2 = rng.normal(size=(n, 7)), rng.normal(size=(n, 7))
    loss, stats = nt_xent(jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32), tau)
    np.testing.assert_allclose(float(loss), np_nt_xent(z1, z2, tau), rtol=2e-5, atol=2e-5)
    z = np_unit(np.concatenate([z1, z2]))
    np.testing.assert_allclose(float(stats['pos_sim']), np.mean(np.sum(z1 / np.linalg.norm(
        z1, axis=1, keepdims=True) * np_unit(z2), 1)), atol=1e-5)
    if n > 1:
        sim = z @ z.T
        mask = ~np.eye(2 * n, dtype=bool) & ~np.roll(np.eye(2 * n, dtype=bool), n, axis=1)
        np.testing.assert_allclose(float(stats['neg_sim']), sim[mask].mean(), atol=1e-5)


@pytest.mark.parametrize('n', [1, 3, 32])
@pytest.mark.parametrize('t', [0.0, math.log(1 / 0.07)])
def test_clip_matches_numpy(n, t):
    rng = np.random.default_rng(n)
    x, y = np_unit(rng.normal(size=(n, 6))), np_unit(rng.normal(size=(n, 6)))
    got = clip_loss(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), t)
    np.testing.assert_allclose(float(got), np_clip(x, y, t), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('n', [1, 3, 32])
@pytest.mark.parametrize('t,b', [(math.log(10.0), -10.0), (2.5, 3.0)])
def test_siglip_matches_numpy(n, t, b):
    rng = np.random.default_rng(n + 7)
    x, y = np_unit(rng.normal(size=(n, 6))), np_unit(rng.normal(size=(n, 6)))
    got = siglip_loss(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), t, b)
    np.testing.assert_allclose(float(got), np_siglip(x, y, t, b), rtol=1e-5, atol=1e-5)


def finite_difference_check(f, args, eps=1e-5, samples=3, seed=0):
    """Compares jax.grad(f) with central differences along random directions, one argument
    at a time (float64; f and its gradient compiled once, so this stays fast)."""
    with jax.enable_x64(True):
        args = [jnp.asarray(a, jnp.float64) for a in args]
        f_jit = jax.jit(f)
        grads = jax.jit(jax.grad(f, argnums=tuple(range(len(args)))))(*args)
        rng = np.random.default_rng(seed)
        for argnum, grad in enumerate(grads):
            for _ in range(samples):
                d = jnp.asarray(rng.normal(size=np.shape(args[argnum])))
                plus, minus = list(args), list(args)
                plus[argnum] = args[argnum] + eps * d
                minus[argnum] = args[argnum] - eps * d
                numeric = (f_jit(*plus) - f_jit(*minus)) / (2 * eps)
                np.testing.assert_allclose(float(jnp.sum(grad * d)), float(numeric), rtol=1e-5,
                                           atol=1e-7, err_msg=f'argument {argnum}')


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    finite_difference_check(lambda a, b: contrastive.nt_xent(a, b, 0.3)[0], [z1, z2])
    x, y = np_unit(rng.normal(size=(6, 4))), np_unit(rng.normal(size=(6, 4)))
    finite_difference_check(multimodal.clip_loss, [x, y, 1.5])
    finite_difference_check(multimodal.siglip_loss, [x, y, 1.2, -2.0])


def test_loss_fn_metrics_and_kinds():
    """loss_fn plumbing: views concatenated once; CLIP clamps exp(t) at 100; SigLIP logs b."""
    apply = lambda v, x, train, rngs: x.reshape(x.shape[0], -1)
    batch = {'view1': jnp.ones((4, 2, 2, 1)), 'view2': jnp.ones((4, 2, 2, 1))}
    cfg = ml_collections.ConfigDict({'name': 'contrastive', 'temperature': 0.5})
    loss, m = jax.jit(lambda b: contrastive.loss_fn(apply, {}, b, {}, cfg))(batch)
    assert {'loss', 'pos_sim', 'neg_sim', 'sim_gap', 'temperature', 'accuracy'} <= set(m)
    np.testing.assert_allclose(float(loss), math.log(7), rtol=1e-6)  # all views identical

    rng = np.random.default_rng(1)
    x, y = np_unit(rng.normal(size=(4, 3))), np_unit(rng.normal(size=(4, 3)))
    out = lambda t, b: (lambda v, im, tx, train, rngs: {
        'image': jnp.asarray(x, jnp.float32), 'text': jnp.asarray(y, jnp.float32),
        'logit_scale': jnp.float32(t), 'logit_bias': jnp.float32(b)})
    mm = {'image': None, 'text': None}
    cfg = ml_collections.ConfigDict({'name': 'multimodal', 'kind': 'clip',
                                     'max_logit_scale': math.log(100.0)})
    loss, m = jax.jit(lambda: multimodal.loss_fn(out(10.0, 0.0), {}, mm, {}, cfg))()
    np.testing.assert_allclose(float(loss), np_clip(x, y, math.log(100.0)), rtol=1e-5)
    np.testing.assert_allclose(float(m['logit_scale']), 100.0, rtol=1e-5)
    cfg.kind = 'siglip'
    loss, m = jax.jit(lambda: multimodal.loss_fn(out(math.log(10.0), -10.0), {}, mm, {}, cfg))()
    np.testing.assert_allclose(float(loss), np_siglip(x, y, math.log(10.0), -10.0), rtol=1e-5)
    np.testing.assert_allclose(float(m['logit_bias']), -10.0)
    np.testing.assert_allclose(float(m['temperature']), 0.1, rtol=1e-6)
