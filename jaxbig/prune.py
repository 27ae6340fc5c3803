"""One-shot magnitude pruning of a trained run, and its report (`jaxbig prune`, the command:
jaxbig/commands/prune.py; the masks: jaxbig/pruning.py).

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
"""

from __future__ import annotations

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
