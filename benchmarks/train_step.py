"""LM train-step throughput and MFU against this machine's own measured matmul peak.

    python benchmarks/train_step.py                        # tiny (the default experiment)
    python benchmarks/train_step.py --size small --batch 8 --seq 256
    python benchmarks/train_step.py --size gpt2_small --batch 4 --seq 512 --steps 5

The step is built exactly as `jaxbig train` builds it (experiments/lm.py -> model, loss,
optax chain -> step.make_train_step -> jit with donation), fed a fixed random batch so
input time is excluded. Model FLOPs follow MaxText (`gpt.flops_per_token`). The peak is a
jitted float32 square matmul timed in the same process, so the ratio (MFU) is comparable
across machines and runs. Prints one table; nothing here is a test.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxbig import config as config_lib
from jaxbig import losses, models, optim
from jaxbig import step as step_lib
from jaxbig.models import gpt


def matmul_peak_flops(n: int = 2048, repeats: int = 10) -> float:
    """float32 FLOP/s of a jitted n x n matmul (best of `repeats`)."""
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best = min(_timed(lambda: f(a, a).block_until_ready()) for _ in range(repeats))
    return 2 * n**3 / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def build_lm_step(size: str, batch: int, seq: int, overrides=()):
    """(jitted train_step, state, batch, config) through the real config -> step path."""
    config = config_lib.load(f'experiments/lm.py:size={size},batch={batch},seq={seq}')
    config_lib.apply_overrides(config, overrides)
    model = models.get_model(config.model.name,
                             **{k: v for k, v in config.model.to_dict().items() if k != 'name'})
    loss_module = losses.get_loss_module(config.loss.name)
    tx, schedule = optim.build_optimizer(config.optimizer, config.train.steps)
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 256, size=(batch, seq + 1)).astype(np.int32)
    data = {'inputs': jnp.asarray(tokens[:, :-1]), 'targets': jnp.asarray(tokens[:, 1:]),
            'mask': jnp.ones((batch, seq), jnp.float32)}
    init = step_lib.init_fn(model, tx, loss_module.model_inputs(
        jax.tree.map(lambda x: x[:1], data)), seed=0)
    state = jax.jit(init)()
    train_step = jax.jit(step_lib.make_train_step(model, loss_module.loss_fn, config.loss, tx,
                                                  schedule), donate_argnums=(0,))
    return train_step, state, data, config, model


def time_train_step(size: str, batch: int, seq: int, steps: int, overrides=()) -> dict:
    train_step, state, data, config, model = build_lm_step(size, batch, seq, overrides)
    t0 = time.perf_counter()
    state, metrics = train_step(state, data)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    for _ in range(2):  # warm-up
        state, metrics = train_step(state, data)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, metrics = train_step(state, data)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - t0) / steps
    tokens = batch * seq
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    return {'size': size, 'params': n_params, 'batch': batch, 'seq': seq,
            'compile_s': compile_s, 'step_s': seconds, 'tokens_per_s': tokens / seconds,
            'model_flops_per_s': tokens * gpt.flops_per_token(model, seq) / seconds}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size', default='tiny')
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--seq', type=int, default=128)
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--override', action='append', default=[],
                        help='config override a.b=v (repeatable)')
    args = parser.parse_args()
    overrides = [tuple(o.split('=', 1)) for o in args.override]
    print(f'jax {jax.__version__} on {jax.devices()[0].device_kind} x {jax.device_count()}')
    peak = matmul_peak_flops()
    r = time_train_step(args.size, args.batch, args.seq, args.steps, overrides)
    print(f'matmul peak (float32, 2048^2): {peak / 1e9:8.1f} GFLOP/s')
    print(f'model {r["size"]}: {r["params"]:,} params, batch {r["batch"]} x seq {r["seq"]}, '
          f'compile {r["compile_s"]:.1f} s')
    print(f'train step: {r["step_s"] * 1e3:8.1f} ms   {r["tokens_per_s"]:10,.0f} tokens/s   '
          f'{r["model_flops_per_s"] / 1e9:8.1f} model GFLOP/s')
    print(f'MFU against the measured peak: {r["model_flops_per_s"] / peak:.1%}')


if __name__ == '__main__':
    main()
