"""Run safety: refuse foreign workdirs, stop cleanly on signals, catch non-finite steps."""

from __future__ import annotations

import logging
import math
import os
import signal

import jax
import numpy as np

from jaxbig import config as config_lib

CONFIG_FILE = 'config.json'
# Sections that define *what* is trained; a workdir refuses to resume under different ones.
# train.steps, cadences, optimizer settings may change between launches (train longer, etc.).
IDENTITY_SECTIONS = ('model', 'data', 'loss')
# Keys of those sections that change how, not what, is trained (free to change too).
NOT_IDENTITY_KEYS = ('data.prefetch', 'model.moe.grouped')


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient norm; the CLI prints it as one line (exit 3)."""


def check_workdir_config(workdir: str, config, *, force: bool = False):
    """Raises ConfigError if `workdir` holds an experiment with another model/data/loss."""
    path = os.path.join(workdir, CONFIG_FILE)
    if force or not os.path.exists(path):
        return
    with open(path) as f:
        old = config_lib.from_json(f.read())
    new = config_lib.from_json(config_lib.to_json(config))
    for section in IDENTITY_SECTIONS:
        a, b = old.get(section) or {}, new.get(section) or {}
        keys = sorted(set(config_lib.flat_keys(a)) | set(config_lib.flat_keys(b)))
        old_keys = set(config_lib.flat_keys(a))
        for key in keys:
            if key not in old_keys:  # a key newer than the run (e.g. data.tokenizer): the
                continue  # run was made under its default
            if f'{section}.{key}' in NOT_IDENTITY_KEYS:
                continue
            va, vb = _get(a, key), _get(b, key)
            if va != vb:
                raise config_lib.ConfigError(
                    f'workdir {workdir} holds a different experiment ({section}.{key}: '
                    f'{va!r} there, {vb!r} now); use another --workdir, or --force to resume it'
                )


def _get(cfg, dotted):
    for part in dotted.split('.'):
        if part not in cfg:
            return None
        cfg = cfg[part]
    return cfg


class StopRequest:
    """SIGTERM/SIGINT set a flag: the loop saves a checkpoint and exits 0. A second SIGINT
    aborts at once. With several processes, `agreed()` makes every process stop together."""

    def __init__(self):
        self._flag = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self._flag and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self._flag = True
        logging.warning('received signal %d: saving a checkpoint and stopping', signum)

    def agreed(self, step: int, sync_every: int) -> bool:
        """True when this process (or, multi-process, any process) was signalled. Across
        processes the flags are exchanged every `sync_every` steps so all stop at one step."""
        if jax.process_count() == 1:
            return self._flag
        if step % sync_every:
            return False
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.array(self._flag, np.int32))
        return bool(np.any(flags))

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


class NonFiniteWatch:
    """Collects each step's on-device loss / grad norm without waiting for them, and checks
    them (one transfer) before anything is logged or saved: no checkpoint of a diverged
    state is written and the first bad step is named exactly. With `skip` (the step itself
    dropped the bad updates) it only counts them."""

    KEYS = ('total_loss', 'grad_norm')

    def __init__(self, skip: bool):
        self.skip = skip
        self.skipped = 0
        self._pending = []

    def add(self, step: int, metrics):
        """metrics of update number `step`; or, stacked on a leading axis of n updates (one
        `step.multi_step` call), of the updates step - n + 1 .. step."""
        keys = ('skipped',) if self.skip else self.KEYS
        self._pending.append((step, {k: metrics[k] for k in keys if k in metrics}))

    def check(self):
        pending, self._pending = jax.device_get(self._pending), []
        for last, values in pending:
            values = {k: np.atleast_1d(v) for k, v in values.items()}
            if self.skip:
                self.skipped += int(np.sum(values.get('skipped', 0)))
                continue
            n = max((len(v) for v in values.values()), default=0)
            for i in range(n):
                for key in (k for k in self.KEYS if k in values):  # device_get sorts dict keys
                    value = float(values[key][i])
                    if not math.isfinite(value):
                        raise TrainingDiverged(
                            f'non-finite train/{key}={value} at step {last - n + 1 + i}; '
                            'stopped without checkpointing it (set '
                            'train.skip_nonfinite_steps=true to skip such updates instead)'
                        )


class FreshWorkdirGuard:
    """Undoes what a fresh run wrote to its workdir if it fails before its first update.

    A workdir counts as fresh when it holds no config.json yet. `commit()` (called after
    the first completed update) makes the run's outputs permanent; `undo()` after a failure
    before that removes the entries created since the guard was made (the whole directory
    if it did not exist), so the corrected command is not refused as another experiment.
    """

    def __init__(self, workdir: str, *, enabled: bool = True):
        self.workdir = workdir
        self.existed = os.path.isdir(workdir)
        fresh = not os.path.exists(os.path.join(workdir, CONFIG_FILE))
        self.active = enabled and fresh
        self.before = set(os.listdir(workdir)) if self.existed else set()

    def commit(self):
        self.active = False

    def undo(self):
        if not self.active or not os.path.isdir(self.workdir):
            return
        import shutil

        if not self.existed:
            shutil.rmtree(self.workdir, ignore_errors=True)
            return
        for name in set(os.listdir(self.workdir)) - self.before:
            path = os.path.join(self.workdir, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)
        logging.info('removed the outputs of a run that failed before its first update')
