"""The one training loop: config -> mesh -> data -> model/loss/optimizer -> sharded state
-> compiled step -> loop (log, evaluate, checkpoint) -> outputs in the workdir.

Every task (LM pretraining, contrastive, fine-tuning) runs through `train()`; only the
names in the config change. Read it top to bottom.
"""

from __future__ import annotations

import logging
import os
import signal
import time

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from jaxbig import checkpoint as ckpt_lib
from jaxbig import config as config_lib
from jaxbig import data as data_lib
from jaxbig import losses, models, optim, parallel, step as step_lib, writers
from jaxbig.evals import loss as loss_eval

CONFIG_FILE = 'config.json'
# Sections that define *what* is trained; a workdir refuses to resume under different ones.
IDENTITY_SECTIONS = ('model', 'data', 'loss')


def check_workdir_config(workdir: str, config, *, force: bool = False):
    """Refuses to resume a workdir that holds another experiment (different model/data/loss)."""
    path = os.path.join(workdir, CONFIG_FILE)
    if force or not os.path.exists(path):
        return
    with open(path) as f:
        old = config_lib.from_json(f.read())
    new = config_lib.from_json(config_lib.to_json(config))
    for section in IDENTITY_SECTIONS:
        a, b = old.get(section), new.get(section)
        if a != b:
            keys = sorted(
                k
                for k in set(config_lib.flat_keys(a or {})) | set(config_lib.flat_keys(b or {}))
                if _get(a, k) != _get(b, k)
            )
            raise config_lib.ConfigError(
                f'workdir {workdir} holds a different experiment ({section}.{keys[0] if keys else ""} '
                f'differs: {_get(a, keys[0]) if keys else a!r} vs {_get(b, keys[0]) if keys else b!r}); '
                'use another --workdir, or --force to resume it anyway'
            )


def _get(cfg, dotted):
    for part in dotted.split('.'):
        if cfg is None or part not in cfg:
            return None
        cfg = cfg[part]
    return cfg


class _StopRequest:
    """SIGTERM/SIGINT -> finish the current step, save, exit cleanly. Second SIGINT aborts."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        logging.warning('received signal %d: saving a checkpoint and stopping', signum)

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def validate(config):
    """Config checks that need no devices; mesh-dependent checks happen in `train`."""
    t = config.train
    for key in ('steps', 'batch_size', 'log_every'):
        if t[key] < 1:
            raise config_lib.ConfigError(f'train.{key}={t[key]}: must be >= 1')
    for key in ('eval_every', 'checkpoint_every'):
        if t[key] < 0:
            raise config_lib.ConfigError(f'train.{key}={t[key]}: must be >= 0 (0 = never)')
    optim.validate(config.optimizer)
    accum = config.optimizer.get('grad_accum_steps', 1)
    if t.batch_size % accum:
        raise config_lib.ConfigError(
            f'train.batch_size={t.batch_size} is not divisible by '
            f'optimizer.grad_accum_steps={accum}'
        )


def train(config: ml_collections.ConfigDict, workdir: str, *, force: bool = False) -> dict:
    """Trains (or resumes) `config` in `workdir`; returns the last logged metrics."""
    validate(config)
    parallel.maybe_initialize_distributed(config.parallel)
    is_main = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    check_workdir_config(workdir, config, force=force)
    if is_main:
        with open(os.path.join(workdir, CONFIG_FILE), 'w') as f:
            f.write(config_lib.to_json(config))
    logging.info('config:\n%s', config)
    t = config.train

    # ---------------------------------------------------------------- Mesh
    mesh = parallel.make_mesh(config.parallel)
    rules = parallel.rules_from_config(config.parallel)
    parallel.host_batch_rows(t.batch_size, mesh)
    logging.info('mesh: %s', parallel.describe_mesh(mesh))

    # ---------------------------------------------------------------- Input
    if is_main:
        data_lib.prepare(config.data)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices('jaxbig: data prepared')
    host = dict(process_index=jax.process_index(), process_count=jax.process_count())
    train_data = data_lib.build_pipeline(
        config.data, split=config.data.train_split, batch_size=t.batch_size, seed=t.seed, **host
    )
    val_data = data_lib.build_pipeline(
        config.data,
        split=config.data.val_split,
        batch_size=t.get('eval_batch_size', 0) or t.batch_size,
        seed=0,
        **host,
    )
    batch_sharding = parallel.batch_sharding(mesh)
    to_global = lambda b: parallel.to_global(b, batch_sharding)

    # ---------------------------------------------------------------- Model, loss, optimizer
    model_kwargs = {k: v for k, v in config.model.to_dict().items() if k != 'name'}
    model = models.get_model(config.model.name, **model_kwargs)
    loss_module = losses.get_loss_module(config.loss.name)
    tx, schedule = optim.build_optimizer(config.optimizer, t.steps)
    example = loss_module.model_inputs(jax.tree.map(lambda x: x[:1], train_data.get_batch(0)))

    # ---------------------------------------------------------------- Shard & init
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        init = step_lib.init_fn(model, tx, example, t.seed)
        abstract_state = jax.eval_shape(init)
        param_specs = nn.get_partition_spec(
            jax.eval_shape(step_lib.init_fn(model, tx, example, t.seed, boxed=True))
        )
        logical = parallel.state_logical_specs(abstract_state, param_specs)
        state_shardings = parallel.logical_to_shardings(logical, mesh, rules)

        # -------------------------------------------------------------- Resume or init
        checkpointer = ckpt_lib.Checkpointer(
            workdir, keep=t.get('keep_checkpoints', 3), keep_period=t.get('keep_every', 0) or None
        )
        start = checkpointer.latest_step()
        if start is not None:
            logging.info('resuming from %s step %d', checkpointer.directory, start)
            state = checkpointer.restore(
                start, ckpt_lib.abstract_with_shardings(abstract_state, state_shardings)
            )
        else:
            state = jax.jit(init, out_shardings=state_shardings)()
        num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_state.params))
        logging.info(
            'parameters: %s (%.1f MB/device), optimizer state %.1f MB/device',
            f'{num_params:,}',
            parallel.bytes_per_device(state.params) / 2**20,
            parallel.bytes_per_device(state.opt_state) / 2**20,
        )

        # -------------------------------------------------------------- Compile steps
        accum = config.optimizer.get('grad_accum_steps', 1)
        train_step = step_lib.jit_train_step(
            step_lib.make_train_step(model, loss_module.loss_fn, config.loss, tx, schedule, accum),
            state_shardings,
            batch_sharding,
        )
        eval_step = step_lib.jit_eval_step(
            step_lib.make_eval_step(model, loss_module.loss_fn, config.loss),
            state_shardings.params,
            batch_sharding,
        )
        evaluator = loss_eval.Evaluator(eval_step, val_data, t.eval_steps, to_global)

        # -------------------------------------------------------------- Loop
        writer = writers.MetricWriter(workdir)
        first = int(jax.device_get(state.step))
        tokens_per_batch = _tokens_per_batch(train_data.get_batch(0)) * jax.process_count()
        last = {}
        progress = _progress_bar(first, t.steps, enabled=is_main)
        timer_step, timer = first, time.perf_counter()
        with _StopRequest() as stop:
            for step in range(first + 1, t.steps + 1):
                batch = to_global(train_data.get_batch(step - 1))
                state, metrics = train_step(state, batch)
                row = {}
                if step % t.log_every == 0 or step == t.steps:
                    metrics = jax.device_get(metrics)
                    elapsed = time.perf_counter() - timer
                    steps_done = step - timer_step
                    row.update({f'train/{k}': float(v) for k, v in metrics.items()})
                    row['train/steps_per_sec'] = steps_done / elapsed
                    if tokens_per_batch:
                        row['train/tokens_per_sec'] = steps_done * tokens_per_batch / elapsed
                    row['train/num_params'] = num_params
                    progress.set_postfix(
                        loss=f'{row["train/total_loss"]:.4f}',
                        tok_s=f'{row.get("train/tokens_per_sec", 0):,.0f}',
                        refresh=False,
                    )
                if t.eval_every and (step % t.eval_every == 0 or step == t.steps):
                    row.update(evaluator.run(state.params))
                if row:
                    writer.write(step, row)
                    last.update(row)
                    timer_step, timer = step, time.perf_counter()
                progress.update(1)
                if (
                    stop.requested
                    or (t.checkpoint_every and step % t.checkpoint_every == 0)
                    or (step == t.steps)
                ):
                    checkpointer.save(step, state, force=True)
                if stop.requested:
                    logging.warning('stopped at step %d; rerun the same command to resume', step)
                    break
        progress.close()
        checkpointer.wait()
        checkpointer.close()
        writer.close()
    if is_main:
        writers.plot_loss_curve(workdir)
    return last


def _tokens_per_batch(batch) -> int:
    """Tokens per host batch for token-sequence inputs (int [batch, seq]); 0 otherwise."""
    x = batch.get('inputs')
    if x is not None and x.ndim == 2 and np.issubdtype(x.dtype, np.integer):
        return int(x.size)
    return 0


def _progress_bar(start: int, total: int, *, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=start,
        disable=not enabled,
        desc='train',
        unit='step',
        dynamic_ncols=True,
        mininterval=1.0,
    )
