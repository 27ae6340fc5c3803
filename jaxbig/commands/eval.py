"""`jaxbig eval --workdir DIR`: re-run a finished run's evaluators on its best checkpoint
(`<workdir>/best/`, kept when `train.best_metric` is set) or else its latest one.

Uses the run's own resolved config (`config.json`) and the same `run.setup` as training, so
nothing has to be repeated on the command line and the evaluators are the run's own;
`--step N` picks a checkpoint of `<workdir>/checkpoints/`. Prints one line per metric and
appends them to `<workdir>/eval_results.jsonl`. (The evaluators themselves: jaxbig/evals/.)
"""

from __future__ import annotations

import json
import os

import flax.linen as nn
import jax

from jaxbig import data as data_lib
from jaxbig import parallel
from jaxbig import run as run_lib


def evaluate(workdir: str, step: int | None = None) -> dict[str, float]:
    config = run_lib.read_config(workdir)
    parallel.maybe_initialize_distributed(config.parallel)
    if jax.process_index() == 0:
        data_lib.prepare(config.data)
    s = run_lib.setup(config, workdir)
    best = step is None and os.path.isdir(os.path.join(workdir, 'best', 'checkpoints'))
    run = run_lib.load_run(workdir, step, best=best, params_shardings=s.state_shardings.params)
    source = os.path.dirname(run.checkpoint_dir)
    with jax.set_mesh(s.mesh), nn.logical_axis_rules(s.rules):
        results = {}
        for _, evaluator in s.evaluators.values():
            results.update(evaluator.run(run.params))
    if jax.process_index() == 0:
        where = os.path.relpath(source, workdir)
        with open(os.path.join(workdir, 'eval_results.jsonl'), 'a') as f:
            f.write(json.dumps({'step': run.step, 'checkpoint': where, **results}) + '\n')
        print(f'{workdir}: checkpoint {where} step {run.step}')
        for k, v in sorted(results.items()):
            print(f'  {k:32s} {v:.6g}')
    return results


def main(args) -> int:
    """`jaxbig eval` with the arguments jaxbig/cli.py parsed (--workdir, --step)."""
    evaluate(args.workdir, None if args.step < 0 else args.step)
    return 0
