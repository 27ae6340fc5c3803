"""Why `layers.Linear` flattens to one 2-D matmul: a SwiGLU MLP's fwd+bwd, two ways, one run.

    python benchmarks/matmul_layout.py                  # tiny and GPT-2-small MLP shapes
    python benchmarks/matmul_layout.py --json

Both variants compute down(silu(gate(x)) * up(x)) on x [batch, seq, embed] with the same
weights and return the same values and gradients (checked):

  dot_general_3d  flax's `nn.Dense` way: lax.dot_general contracting the last dim of the
                  3-D activation. Its weight gradient contracts two dims (batch, seq);
                  XLA CPU lays one operand out transposed for it and materialises a
                  transposed copy of the [rows, mlp] gradient (`copy_bitcast_fusion`).
  matmul_2d       jaxbig's `layers.Linear`: reshape to [batch * seq, embed], one 2-D matmul,
                  reshape back. The weight gradient contracts one dim; no copy.

jaxbig is imported first, so its XLA defaults (jaxbig/runtime/xla_defaults.py) apply, as in a
jaxbig run. Prints the best-of-`--repeats` milliseconds of each and the speed ratio. Nothing here is a
test.
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxbig  # noqa: F401  (jaxbig's XLA defaults, as in a jaxbig run)

# (name, batch, seq, embed, mlp): the MLP of the tiny and GPT-2-small LM presets.
SHAPES = [('tiny', 32, 128, 128, 384), ('gpt2_small', 4, 512, 768, 2048)]


def dense_3d(x, w):
    return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))


def matmul_2d(x, w):
    return (x.reshape(-1, x.shape[-1]) @ w).reshape(*x.shape[:-1], w.shape[-1])


def mlp_loss(dot):
    def loss(x, gate, up, down):
        return jnp.sum(dot(jax.nn.silu(dot(x, gate)) * dot(x, up), down) ** 2)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))


def best_ms(fn, steps: int, repeats: int) -> float:
    """Best-of-`repeats` mean milliseconds of `steps` calls of fn() (after one warm call)."""
    jax.block_until_ready(fn())
    best = float('inf')
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            out = fn()
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - t0) / steps)
    return best * 1e3


def measure(batch, seq, embed, mlp, steps, repeats) -> dict:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, seq, embed)), jnp.float32)
    weights = [jnp.asarray(rng.normal(size=s) * 0.05, jnp.float32)
               for s in ((embed, mlp), (embed, mlp), (mlp, embed))]
    fns = {'dot_general_3d': mlp_loss(dense_3d), 'matmul_2d': mlp_loss(matmul_2d)}
    outs = [fn(x, *weights) for fn in fns.values()]
    for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1])):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-3)
    ms = {}
    for _ in range(repeats):  # interleaved, so drifts in the machine's speed hit both
        for name, fn in fns.items():
            ms[name] = min(ms.get(name, float('inf')),
                           best_ms(lambda fn=fn: fn(x, *weights), steps, 1))
    return dict(ms, speedup=ms['dot_general_3d'] / ms['matmul_2d'])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--steps', type=int, default=5)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--json', action='store_true')
    args = parser.parse_args()
    rows = {name: dict(shape=[b, s, e, m], **measure(b, s, e, m, args.steps, args.repeats))
            for name, b, s, e, m in SHAPES}
    if args.json:
        print(json.dumps(rows))
        return
    print(f'{"MLP shape":34s} {"3-D dot_general":>16s} {"2-D matmul":>11s} {"2-D speedup":>12s}')
    for name, r in rows.items():
        b, s, e, m = r['shape']
        print(f'{name + f" x[{b},{s},{e}] mlp {m}":34s} {r["dot_general_3d"]:13.1f} ms '
              f'{r["matmul_2d"]:8.1f} ms {r["speedup"]:11.2f}x')


if __name__ == '__main__':
    from jaxbig.runtime import xla_defaults

    xla_defaults.restart_with_malloc_defaults()  # as `jaxbig train` runs (jaxbig/runtime/)
    main()
