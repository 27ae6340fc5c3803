"""Checkpoints of the whole TrainState with orbax: async save, keep-N, auto-resume, and the
best checkpoint by a validation metric (with early stopping).

Layout: `<workdir>/checkpoints/<step>/...`. orbax writes each save into a temporary
directory and renames it when complete, so an interrupted save never shadows the previous
checkpoint; the remains of such a save are removed when the next run starts. All processes
call `save`/`restore` together (orbax coordinates multi-host).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxbig.config import ConfigError


class Checkpointer:
    """Thin wrapper over `ocp.CheckpointManager` with the policy from `config.train`."""

    def __init__(
        self,
        workdir: str,
        *,
        keep: int = 3,
        keep_period: int | None = None,
        async_save: bool = True,
    ):
        self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
        self.damaged_directory = os.path.join(os.path.abspath(workdir), 'checkpoints_damaged')
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            keep_period=keep_period or None,
            enable_async_checkpointing=async_save,
            create=True,
            cleanup_tmp_directories=True,  # the remains of saves cut short by a crash
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=ocp.StandardCheckpointHandler()
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state, *, force: bool = False) -> bool:
        return self._manager.save(step, args=ocp.args.StandardSave(state), force=force)

    def restore(self, step: int, abstract_state):
        """`abstract_state`: a tree of jax.ShapeDtypeStruct carrying the target shardings."""
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

    def restore_latest(self, abstract_state):
        """Restores the newest checkpoint that reads back whole; None if there is none.

        A damaged newest checkpoint (e.g. files removed or truncated by hand, a disk that
        filled) is reported with a warning naming it and skipped for the one before. A
        checkpoint whose stored tree differs from `abstract_state` (another model width, another
        optimizer) raises ConfigError naming the path and both shapes, and nothing is moved.
        """
        for step in sorted(self.all_steps(), reverse=True):
            try:
                stored = _leaf_shapes(getattr(self._manager.item_metadata(step), 'tree', None))
                if not stored:
                    raise ValueError('its tree metadata lists no arrays')
            except Exception as e:  # unreadable metadata: a damaged checkpoint
                self._skip_damaged(step, e)
                continue
            check_compatible(stored, abstract_state, f'{self.directory}/{step}')
            try:
                state = self.restore(step, abstract_state)
            except Exception as e:  # orbax/tensorstore raise many types for damaged data
                self._skip_damaged(step, e)
                continue
            logging.info('resumed from %s/%d', self.directory, step)
            return state
        return None

    def _skip_damaged(self, step: int, error: Exception):
        logging.warning(
            'checkpoint %s/%d is damaged, skipping it (moved to %s): %s',
            self.directory,
            step,
            self.damaged_directory,
            (str(error).splitlines() or [type(error).__name__])[0][:300],
        )
        self._set_aside(step)

    def _set_aside(self, step: int):
        """Moves a damaged step out of the way (kept for inspection, never deleted), so the
        run can write that step again."""
        if jax.process_index() == 0:
            os.makedirs(self.damaged_directory, exist_ok=True)
            target = os.path.join(self.damaged_directory, f'{step}.{int(time.time())}')
            shutil.move(os.path.join(self.directory, str(step)), target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f'jaxbig: set aside checkpoint {step}')
        self._manager.reload()

    def delete(self, step: int):
        self._manager.delete(step)

    def wait(self):
        self._manager.wait_until_finished()

    def close(self):
        self._manager.close()


class BestCheckpoint:
    """Keeps the best checkpoint by `metric` in `<workdir>/best/` and signals early stopping
    after `patience` evaluations without improvement (0 = never); `metric=''` = off.

    Every evaluation (step, value) is recorded in `<workdir>/best/tracker.json` (written
    atomically by process 0), so a resumed run compares against the best value seen before
    and keeps counting patience. `resume(step)` forgets evaluations (and best checkpoints)
    after the restored step: the resumed run recomputes them. A run that stopped early stays
    stopped when rerun, whatever `train.steps`; raise `train.patience` (or set 0) to train
    on. A different metric or mode starts a fresh record.
    """

    FILE = 'tracker.json'

    def __init__(self, workdir: str, *, metric: str = '', mode: str = 'max', patience: int = 0):
        if mode not in ('max', 'min'):
            raise ConfigError(f"train.best_mode={mode!r}: expected 'max' or 'min'")
        self.metric, self.mode, self.patience = metric, mode, patience
        self.history: list[tuple[int, float]] = []  # every evaluation: (step, value)
        self._ckpt = None
        if not metric:
            return
        directory = os.path.join(workdir, 'best')
        self._ckpt = Checkpointer(directory, keep=1)
        self._path = os.path.join(directory, self.FILE)
        if os.path.exists(self._path):
            with open(self._path) as f:
                saved = json.load(f)
            if (saved['metric'], saved['mode']) == (metric, mode):
                self.history = [(int(s), float(v)) for s, v in saved['history']]
            else:
                logging.info('best checkpoint: now by %s (%s); previous record ignored',
                             metric, mode)

    def _better(self, value: float, than: float | None) -> bool:
        if not math.isfinite(value):
            return False
        return than is None or (value > than if self.mode == 'max' else value < than)

    def best(self) -> tuple[int, float] | None:
        """(step, value) of the earliest best finite evaluation; None before any."""
        out = None
        for step, value in self.history:
            if self._better(value, out and out[1]):
                out = (step, value)
        return out

    def evals_without_improvement(self) -> int:
        best = self.best()
        return sum(1 for s, _ in self.history if best is None or s > best[0])

    def stopped_early(self) -> bool:
        return bool(self.metric and self.patience) and (
            self.evals_without_improvement() >= self.patience
        )

    def resume(self, step: int):
        """Forgets what happened after `step` (the step training resumes from)."""
        self.history = [(s, v) for s, v in self.history if s <= step]
        if self._ckpt is not None:
            for s in self._ckpt.all_steps():
                if s > step:
                    self._ckpt.delete(s)

    def update(self, step: int, row: dict, state) -> bool:
        """Records `row[metric]` (if evaluated), saves `state` if it is the best so far;
        returns True when patience has run out."""
        if not self.metric or self.metric not in row:
            return False
        value = float(row[self.metric])
        best = self.best()
        self.history.append((step, value))
        self._write()
        if self._better(value, best and best[1]):
            self._ckpt.save(step, state, force=True)
        return self.stopped_early()

    def summary(self) -> str:
        best = self.best()
        where = f'{best[1]:.4f} at step {best[0]}' if best else 'none yet'
        return (f'best {self.metric}={where}; {self.evals_without_improvement()} evaluations '
                f'without improvement (train.patience={self.patience})')

    def _write(self):
        if jax.process_index() != 0:
            return
        record = {'metric': self.metric, 'mode': self.mode, 'history': self.history}
        os.makedirs(os.path.dirname(self._path), exist_ok=True)
        with open(self._path + '.tmp', 'w') as f:
            json.dump(record, f)
        os.replace(self._path + '.tmp', self._path)

    def close(self):
        if self._ckpt is not None:
            self._ckpt.wait()
            self._ckpt.close()


def _leaf_shapes(tree) -> dict[str, tuple]:
    """{'params/block_0/mlp/kernel': shape} for every array leaf (shape-less leaves skipped).
    Dict keys, attribute names and sequence indices all become path parts, so a saved tree
    (dicts and lists) and the live TrainState (dataclasses, named tuples) compare."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if getattr(leaf, 'shape', None) is None:
            continue
        parts = (getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k))) for k in path)
        out['/'.join(str(p) for p in parts)] = tuple(leaf.shape)
    return out


def check_compatible(stored: dict[str, tuple], abstract_state, where: str):
    """Raises a one-line ConfigError if the checkpoint at `where` (`stored`: its arrays'
    shapes by path, from `_leaf_shapes` of its orbax tree metadata) does not hold exactly the
    arrays of `abstract_state`, naming the first differing path and both shapes."""
    wanted = _leaf_shapes(abstract_state)
    fix = 'use another --workdir (or init_from to load just the params)'
    for path, shape in wanted.items():
        if path not in stored:
            raise ConfigError(
                f'checkpoint {where} has no {path} (shape {shape} in this model): it was '
                f'written by another model or optimizer; {fix}'
            )
        if stored[path] != shape:
            raise ConfigError(
                f'checkpoint {where} is from an incompatible model: {path} has shape '
                f'{stored[path]} there but {shape} in this model; {fix}'
            )
    extra = [p for p in stored if p not in wanted]
    if extra:
        raise ConfigError(
            f'checkpoint {where} holds {extra[0]} (shape {stored[extra[0]]}), which this '
            f'model/optimizer lacks: it was written by another one; {fix}'
        )


def abstract_with_shardings(abstract_tree, shardings):
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings
    )


def restore_params(path: str, step: int | None = None, *, shardings=None):
    """Reads only the params of a checkpoint (an orbax partial restore: the optimizer state
    is never read), for fine-tuning, evaluation, generation.

    `path` is a workdir (uses `<path>/checkpoints`) or a checkpoints directory; `step=None`
    takes the latest complete one; a missing step names the available ones. `shardings` (a
    tree matching the params) places each array straight into its sharding; otherwise they
    are numpy arrays on the host. Returns (params, step).
    """
    directory = (
        path
        if os.path.basename(os.path.normpath(path)) == 'checkpoints'
        else (os.path.join(path, 'checkpoints'))
    )
    if not os.path.isdir(directory):
        raise FileNotFoundError(f'no checkpoints directory at {directory}')
    with ocp.CheckpointManager(
        os.path.abspath(directory), item_handlers=ocp.StandardCheckpointHandler()
    ) as manager:
        available = sorted(manager.all_steps())
        if step is None:
            step = manager.latest_step()
            if step is None:
                raise FileNotFoundError(f'no complete checkpoint in {directory}')
        elif step not in available:
            raise FileNotFoundError(
                f'step {step}: no checkpoint of that step in {directory} '
                f'(available steps: {available})'
            )
        stored = getattr(manager.item_metadata(step), 'tree', None)
    if not stored or 'params' not in stored:
        raise FileNotFoundError(f'{directory}/{step}: the checkpoint holds no params')
    stored = stored['params']
    if shardings is None:
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), stored)
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), stored)
    else:
        target = jax.tree.map(
            lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=s), stored, shardings
        )
        restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s), shardings)
    restored = ocp.PyTreeCheckpointer().restore(
        os.path.join(os.path.abspath(directory), str(step), 'default'),
        args=ocp.args.PyTreeRestore(
            item={'params': target}, restore_args={'params': restore_args}, partial_restore=True
        ),
    )
    return restored['params'], step
