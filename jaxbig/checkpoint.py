"""Checkpoints of the whole TrainState with orbax: async save, keep-N, auto-resume.

Layout: `<workdir>/checkpoints/<step>/...`. orbax writes each save into a temporary
directory and renames it when complete, so an interrupted save never shadows the previous
checkpoint. All processes call `save`/`restore` together (orbax coordinates multi-host).
"""

from __future__ import annotations

import logging
import os
import shutil
import time

import jax
import orbax.checkpoint as ocp


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
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

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
        filled) is reported with a warning naming it and skipped for the one before.
        """
        for step in sorted(self.all_steps(), reverse=True):
            try:
                state = self.restore(step, abstract_state)
            except Exception as e:  # orbax/tensorstore raise many types for damaged data
                logging.warning(
                    'checkpoint %s/%d is damaged, skipping it (moved to %s): %s',
                    self.directory,
                    step,
                    self.damaged_directory,
                    str(e).splitlines()[0][:300],
                )
                self._set_aside(step)
                continue
            logging.info('resumed from %s/%d', self.directory, step)
            return state
        return None

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

    def wait(self):
        self._manager.wait_until_finished()

    def close(self):
        self._manager.close()


def abstract_with_shardings(abstract_tree, shardings):
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings
    )


def restore_params(path: str, step: int | None = None):
    """Loads only the params of a checkpoint (for fine-tuning, evaluation, generation).

    `path` is a workdir (uses `<path>/checkpoints`) or a checkpoints directory; `step=None`
    takes the latest. Returns (params as numpy-backed arrays, step).
    """
    directory = (
        path
        if os.path.basename(os.path.normpath(path)) == 'checkpoints'
        else (os.path.join(path, 'checkpoints'))
    )
    if not os.path.isdir(directory):
        raise FileNotFoundError(f'no checkpoints directory at {directory}')
    with ocp.CheckpointManager(os.path.abspath(directory)) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f'no complete checkpoint in {directory}')
        restored = manager.restore(step, args=ocp.args.StandardRestore())
    return restored['params'], step
