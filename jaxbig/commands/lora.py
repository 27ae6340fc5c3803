"""`jaxbig lora merge --workdir RUN --out DIR [--step N] [--best]`: write a LoRA run's merged plain weights, W + (alpha/rank) A B (jaxbig.lora.merge),
as a new workdir that the model without adapters loads (eval, generate, init_from).

Keeps its own parser: jaxbig/cli.py hands `jaxbig lora ARGS` to `main(ARGS, prog='jaxbig
lora')`, so help, usage errors (status 2) and exits are the same in both forms.
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxbig import checkpoint, lora
from jaxbig import run as run_lib
from jaxbig.config import ConfigError

PROG = 'jaxbig lora'


def merge_run(workdir: str, out: str, step: int | None = None, *, best: bool = False) -> int:
    """Writes `out`: the run's config without `lora` and a checkpoint whose params are the
    merged plain weights (loadable by `jaxbig eval`, generation, `init_from`; not resumable:
    no optimizer state). Returns the merged step."""
    config = run_lib.read_config(workdir).to_dict()
    cfg = config.pop(lora.KEY, None) or {}
    if not cfg.get('targets'):
        raise ConfigError(f'{workdir}: its config has no lora.targets (nothing to merge)')
    run = run_lib.load_run(workdir, step, best=best)
    params, step, source = run.params, run.step, os.path.dirname(run.checkpoint_dir)
    if lora.KEY not in params:
        raise ConfigError(f'{source}: the checkpoint has no {lora.KEY!r} parameters')
    scale = cfg['alpha'] / cfg['rank']
    merged = jax.device_get(lora.merge(jax.tree.map(jnp.asarray, params), scale))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, 'config.json'), 'w') as f:
        json.dump(config, f, indent=2)
    saver = checkpoint.Checkpointer(out, keep=1, async_save=False)
    saver.save(step, {'params': merged, 'step': np.int32(step)}, force=True)
    saver.wait()
    saver.close()
    adapters = jax.tree.leaves(params[lora.KEY])
    n_lora = sum(int(np.prod(x.shape)) for x in adapters)
    print(
        f'{source} step {step}: merged {n_lora:,} adapter parameters into '
        f'{len(adapters) // 2} kernels; plain weights in {out}'
    )
    return step


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description='LoRA tools', allow_abbrev=False)
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    p = sub.add_parser('merge', help='write plain weights: W + (alpha/rank) A B',
                       description='write plain weights: W + (alpha/rank) A B',
                       allow_abbrev=False)
    p.add_argument('--workdir', required=True, help='a run trained with config.lora')
    p.add_argument('--out', required=True, help='new workdir for the merged weights')
    p.add_argument('--step', type=int, default=-1, help='checkpoint step (default: latest)')
    p.add_argument('--best', action='store_true', help='merge <workdir>/best/ instead')
    return parser


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """Parses `argv` (default: sys.argv[1:]) and merges; returns 0. Errors in the run (no
    config.json, no adapters) propagate: the caller prints them (jaxbig.cli.guarded)."""
    args = build_parser(prog).parse_args(argv)
    merge_run(args.workdir, args.out, None if args.step < 0 else args.step, best=args.best)
    return 0
