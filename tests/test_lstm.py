"""jaxbig.models.lstm against a NumPy LSTM; step-by-step decoding == the full forward;
trains through the autoregressive loss; the experiment through the CLI (slow)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import metric_series, run_cli
from jaxbig import config as config_lib
from jaxbig.aggregate import values
from jaxbig.losses import autoregressive
from jaxbig.models import get_model, lstm

ARGS = dict(vocab_size=40, embed_dim=12, hidden_dim=16, num_layers=2)


@functools.cache
def _setup():
    model = lstm.Model(**ARGS)
    tokens = jax.random.randint(jax.random.key(0), (3, 9), 0, ARGS['vocab_size'])
    params = nn.unbox(jax.jit(model.init)(jax.random.key(1), tokens)['params'])
    return model, params, tokens


def np_lstm_lm(params, tokens):
    """Embedding -> stacked LSTMs (gates i, f, g, o; c' = f c + i g; h' = o tanh c') -> Dense."""
    sig = lambda x: 1 / (1 + np.exp(-x))
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    x = p['embed']['embedding'][np.asarray(tokens)]  # [b, t, e]
    for i in range(ARGS['num_layers']):
        cell = p[f'layers_{i}']['cell']

        def gate(n, xt, h, cell=cell):
            hn = cell['h' + n]
            return xt @ cell['i' + n]['kernel'] + h @ hn['kernel'] + hn['bias']

        c = h = np.zeros((x.shape[0], ARGS['hidden_dim']))
        hs = []
        for t in range(x.shape[1]):
            xt = x[:, t]
            i_, f_ = sig(gate('i', xt, h)), sig(gate('f', xt, h))
            g_, o_ = np.tanh(gate('g', xt, h)), sig(gate('o', xt, h))
            c = f_ * c + i_ * g_
            h = o_ * np.tanh(c)
            hs.append(h)
        x = np.stack(hs, 1)
    return x @ p['head']['kernel'] + p['head']['bias']


def test_forward_matches_numpy():
    model, params, tokens = _setup()
    logits = model.apply({'params': params}, tokens)
    assert logits.shape == (3, 9, ARGS['vocab_size'])
    np.testing.assert_allclose(logits, np_lstm_lm(params, tokens), rtol=1e-4, atol=1e-5)


def test_step_by_step_equals_full_sequence():
    model, params, tokens = _setup()
    full = model.apply({'params': params}, tokens)
    dec = jax.jit(functools.partial(model.apply, {'params': params}, method='decode'))
    cache = lstm.init_cache(model, 3, 0)
    steps = []
    for t in range(tokens.shape[1]):
        logits, cache = dec(tokens[:, t:t + 1], jnp.full((3, 1), t), cache)
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, 1), full, rtol=1e-5, atol=1e-6)
    assert cache['h'].shape == (2, 3, 16)


def test_padding_steps_leave_the_state_unchanged():
    model, params, tokens = _setup()
    dec = functools.partial(model.apply, {'params': params}, method='decode')
    cache = lstm.init_cache(model, 3, 0)
    pad = jnp.concatenate([jnp.zeros((3, 4), jnp.int32), tokens], 1)
    positions = jnp.concatenate([jnp.full((3, 4), -1), jnp.broadcast_to(jnp.arange(9), (3, 9))], 1)
    logits, _ = dec(pad, positions, cache)
    np.testing.assert_allclose(logits[:, 4:], model.apply({'params': params}, tokens),
                               rtol=1e-5, atol=1e-6)


def test_trains_through_the_autoregressive_loss():
    model, params, _ = _setup()
    seq = jnp.tile(jnp.arange(10) % 5, (4, 2))  # a periodic sequence: learnable
    batch = dict(inputs=seq[:, :-1], targets=seq[:, 1:], mask=jnp.ones((4, 19)))
    cfg = config_lib.from_json('{"name": "autoregressive", "z_loss": 0.0}')
    tx = optax.adam(3e-2)

    @jax.jit
    def step(params, opt_state):
        (loss, _), g = jax.value_and_grad(
            lambda p: values(autoregressive.loss_fn(model.apply, p, batch, {}, cfg, train=True)),
            has_aux=True)(params)
        updates, opt_state = tx.update(g, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = tx.init(params)
    losses = []
    for _ in range(40):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses


def test_get_model_by_name():
    assert isinstance(get_model('lstm', **ARGS), lstm.Model)


@pytest.mark.slow
def test_lstm_experiment_through_the_cli(tfds_dir, tmp_path):
    run_cli('train', '--workdir', str(tmp_path), '--config', 'experiments/lstm_lm.py:steps=30',
            '--config.data.seq_len=32', '--config.train.batch_size=16',
            '--config.train.log_every=1', '--config.train.eval_every=0', timeout=600)
    losses = metric_series(tmp_path)
    assert losses[30] < losses[1] - 0.5, (losses[1], losses[30])
    proc = run_cli('generate', '--workdir', str(tmp_path), '--prompt', 'import ',
                   '--max-new-tokens', '16', '--temperature', '0')
    assert proc.stdout.startswith('import ') and len(proc.stdout) > len('import ') + 1
