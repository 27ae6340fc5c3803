"""`jaxbig prune --workdir RUN --sparsity S [--scope global|layer] [--targets REGEX ...]
[--step N] [--out NEWRUN] [--num-batches K]`: one-shot magnitude pruning of a run, its report
and the pruned workdir (the masks, the schedule and the optax transformation that gradual
pruning during training uses: jaxbig/pruning.py).

    prune_run(workdir, sparsity, scope, targets, step, out, num_batches) -> report dict

The run's params (`run.load_run`) are pruned to `sparsity` of the selection; validation
loss before and after is the run's own loss on its val split (`jaxbig.quantize.eval_loss`:
evals.val's batches). With `out`, a new workdir is written beside it atomically (a
temporary directory renamed when complete; nothing is left on an error): the run's
config.json unchanged, a params-only checkpoint of the same step in the usual layout
(`checkpoints/<step>/`, as `jaxbig import` and `jaxbig lora merge` write), and the report
as `pruned.json`. The "after" numbers are then those of that checkpoint read back. It loads
wherever a run does: `jaxbig eval`, `jaxbig generate`, `init_from` (experiments/*:init=);
to train on with the zeros kept, set the same pruning in the new run
(`--config.optimizer.prune.sparsity=S`: one shot at its first update, which re-selects the
zeros, the smallest weights).

Keeps its own parser: jaxbig/cli.py hands `jaxbig prune ARGS` to `main(ARGS, prog='jaxbig
prune')`, so help, usage errors (status 2) and exits are the same in both forms.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile

import flax.linen as nn
import jax
import numpy as np

from jaxbig import pruning
from jaxbig.config import ConfigError

REPORT_FILE = 'pruned.json'


def check_out(out: str, workdir: str):
    """One-line error unless `out` is a new (or empty) directory other than `workdir`."""
    if os.path.abspath(out) == os.path.abspath(workdir):
        raise ConfigError(f'--out {out}: is the source workdir; write to a new one')
    if os.path.exists(os.path.join(out, 'config.json')):
        raise ConfigError(f'--out {out}: already holds a run; write to a new one')
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ConfigError(f'--out {out}: exists and is not an empty directory')


def prune_run(workdir: str, sparsity: float, *, scope: str = 'global', targets=(),
              step: int | None = None, out: str = '', num_batches: int = 0) -> dict:
    """Prunes the run in `workdir` (checkpoint `step`, None = latest); returns the report:
    step, scope, targets, sparsity, per-leaf zero counts (`layers`, counted on the params
    evaluated), selected / total parameter counts, val_loss_before / val_loss_after."""
    from jaxbig import lora
    from jaxbig import run as run_lib
    from jaxbig.quantize import eval_loss

    pruning.check_scope(scope)
    if not 0 <= sparsity < 1:
        raise ConfigError(f'--sparsity {sparsity}: must be in [0, 1)')
    if out:
        check_out(out, workdir)
    run = run_lib.load_run(workdir, step)
    config, model = run.config, run.model
    if lora.enabled(config.get('lora')):
        raise ConfigError(f'{workdir}: a LoRA run (its adapters would refill pruned kernels); '
                          'prune its merged weights (jaxbig lora merge) instead')
    params = jax.device_get(nn.unbox(run.params))
    selection = pruning.select(params, tuple(targets), where='--targets')
    masks = pruning.magnitude_masks(params, sparsity, scope=scope, targets=tuple(targets))
    pruned = jax.device_get(pruning.apply_masks(params, masks))
    report = dict(workdir=workdir, step=run.step, sparsity=sparsity, scope=scope,
                  targets=list(targets), num_params=int(sum(x.size for x in
                                                            jax.tree.leaves(params))))
    report['val_loss_before'] = eval_loss(config, model, params, num_batches=num_batches)
    if not out:
        return _finish(report, pruned, selection,
                       eval_loss(config, model, pruned, num_batches=num_batches))
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.jaxbig-prune-', dir=parent)
    try:
        write_workdir(tmp, config, pruned, run.step)
        written = run_lib.load_run(tmp, run.step)  # the checkpoint, read back
        after = eval_loss(config, written.model, written.params, num_batches=num_batches)
        report = _finish(report, written.params, selection, after)
        report['out'] = out
        with open(os.path.join(tmp, REPORT_FILE), 'w') as f:
            json.dump(report, f, indent=2)
        if os.path.isdir(out):
            os.rmdir(out)  # empty (check_out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def _finish(report: dict, params, selection, val_loss_after: float) -> dict:
    layers = pruning.zero_counts(params, selection)
    zeros, size = sum(r['zeros'] for r in layers), sum(r['size'] for r in layers)
    return dict(report, layers=layers, selected_zeros=zeros, selected_size=size,
                val_loss_after=val_loss_after,
                val_loss_change=val_loss_after / report['val_loss_before'] - 1)


def write_workdir(directory: str, config, params, step: int):
    """config.json + a params-only checkpoint `checkpoints/<step>/` into `directory`."""
    from jaxbig import checkpoint
    from jaxbig import config as config_lib

    with open(os.path.join(directory, 'config.json'), 'w') as f:
        f.write(config_lib.to_json(config))
    saver = checkpoint.Checkpointer(directory, keep=1, async_save=False)
    saver.save(step, {'params': params, 'step': np.int32(step)}, force=True)
    saver.wait()
    saver.close()


# ---------------------------------------------------------------------- the command
PROG = 'jaxbig prune'
DESCRIPTION = 'one-shot magnitude pruning of a run: sparsity per layer, validation loss'
EPILOG = """\
selection: --targets are regexes fullmatched on '/'-joined parameter paths
  (e.g. '.*mlp/.*kernel'); default: every kernel outside paths containing 'embed' (never
  norms, biases, embeddings). Scope 'global' prunes the smallest |w| over the whole
  selection; 'layer' prunes each kernel (and each layer of a scanned stack) to the sparsity.
gradual pruning during training: --config.optimizer.prune.* (jaxbig/optim.py).
"""


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, epilog=EPILOG,
                                     allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--workdir', required=True, help='a training workdir')
    parser.add_argument('--sparsity', type=float, required=True,
                        help='fraction of the selected weights set to 0, in [0, 1)')
    parser.add_argument('--scope', choices=['global', 'layer'], default='global',
                        help='rank all selected weights together, or each layer alone')
    parser.add_argument('--targets', nargs='+', default=[], metavar='REGEX',
                        help='parameter path regexes to prune (default: the kernels)')
    parser.add_argument('--step', type=int, default=None, help='checkpoint step (default: latest)')
    parser.add_argument('--out', default='', help='write the pruned run as this new workdir')
    parser.add_argument('--num-batches', type=int, default=0, help='0 = evals.val.num_batches')
    return parser


def _percent(zeros: int, size: int) -> str:
    return f'{100 * zeros / size:5.1f}%'


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """Parses `argv` (default: sys.argv[1:]), prunes, prints the report; returns 0. Errors in
    the run or the selection propagate: the caller prints them (jaxbig.cli.guarded)."""
    args = build_parser(prog).parse_args(argv)
    r = prune_run(args.workdir, args.sparsity, scope=args.scope, targets=args.targets,
                        step=args.step, out=args.out, num_batches=args.num_batches)
    print(f"{args.workdir} step {r['step']}: magnitude pruning to {100 * r['sparsity']:g}% "
          f"({r['scope']}) of {len(r['layers'])} tensors, {r['selected_size']:,} of "
          f"{r['num_params']:,} weights")
    width = max(len(row['path']) for row in r['layers'])
    for row in r['layers']:
        shape = str(list(row['shape']))
        line = f"  {row['path']:{width}s}  {shape:18s} {_percent(row['zeros'], row['size'])}"
        if 'per_layer' in row:
            line += '  per layer: ' + ' '.join(
                _percent(z, row['layer_size']).strip() for z in row['per_layer'])
        print(line)
    print(f"zeros: {r['selected_zeros']:,} of {r['selected_size']:,} selected weights "
          f"({_percent(r['selected_zeros'], r['selected_size']).strip()}), "
          f"{_percent(r['selected_zeros'], r['num_params']).strip()} of all parameters")
    print(f"validation loss {r['val_loss_before']:.6f} -> {r['val_loss_after']:.6f} "
          f"({100 * r['val_loss_change']:+.2f}%)")
    if args.out:
        print(f"wrote {args.out} (step {r['step']}, report in {args.out}/{REPORT_FILE}); "
              f"next: jaxbig eval --workdir {args.out}")
    return 0
