"""Train-step compile time against depth, `nn.scan` over layers vs unrolled, in one run.

    python benchmarks/compile_time.py                         # GPT-2-small width, 2..12 layers
    python benchmarks/compile_time.py --size tiny --layers 2 4 8 16 --json

Each point lowers and compiles the real jaxbig train step (benchmarks/train_step.py's
`build_lm_step`: config -> model, loss, optax chain -> jit with donation) on abstract
shapes only (no parameters are materialised), batch 1 x seq 128. With scan, one layer is
traced and compiled once, so the time should stay flat in depth; unrolled grows linearly.
"""
from __future__ import annotations

import argparse
import json
import time

import jax

from train_step import build_lm_step


def compile_seconds(size: str, layers: int, scan: bool, seq: int = 128) -> float:
    overrides = [('model.num_layers', str(layers)), ('model.scan_layers', str(scan).lower())]
    train_step, state, data, _, _ = build_lm_step(size, 1, seq, overrides, abstract=True)
    t0 = time.perf_counter()
    train_step.lower(state, data).compile()
    return time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size', default='gpt2_small')
    parser.add_argument('--layers', type=int, nargs='+', default=[2, 4, 8, 12])
    parser.add_argument('--json', action='store_true')
    args = parser.parse_args()
    rows = [dict(layers=n, scan_s=compile_seconds(args.size, n, True),
                 unrolled_s=compile_seconds(args.size, n, False)) for n in args.layers]
    if args.json:
        print(json.dumps(dict(size=args.size, jax=jax.__version__, rows=rows)))
        return
    print(f'train-step compile seconds, {args.size} width (jax {jax.__version__})')
    print(f'{"layers":>6s} {"scan":>8s} {"unrolled":>9s}')
    for r in rows:
        print(f'{r["layers"]:6d} {r["scan_s"]:8.1f} {r["unrolled_s"]:9.1f}')


if __name__ == '__main__':
    from jaxbig.runtime import xla_defaults

    xla_defaults.restart_with_malloc_defaults()  # as `jaxbig train` runs (jaxbig/runtime/)
    main()
