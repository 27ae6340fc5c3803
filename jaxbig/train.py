"""The one training loop: config -> mesh -> data -> model/loss/optimizer -> sharded state
-> compiled step -> loop (log, evaluate, checkpoint) -> outputs in the workdir.

Every task (LM pretraining, contrastive, fine-tuning) runs through `train()`; only the
names in the config change. Read it top to bottom.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from jaxbig import checkpoint as ckpt_lib
from jaxbig import config as config_lib
from jaxbig import data as data_lib
from jaxbig import evals as evals_lib
from jaxbig import finetune, losses, models, optim, parallel, safety, writers
from jaxbig import pmap as pmap_lib
from jaxbig import step as step_lib


def validate(config):
    """Config checks that need no devices; mesh-dependent checks happen in `train`."""
    t = config.train
    for key in ('steps', 'batch_size', 'log_every', 'steps_per_call'):
        if t.get(key, 1) < 1:
            raise config_lib.ConfigError(f'train.{key}={t[key]}: must be >= 1')
    if t.get('best_mode', 'max') not in ('max', 'min'):
        raise config_lib.ConfigError(f"train.best_mode={t.best_mode!r}: expected 'max' or 'min'")
    for key in ('eval_every', 'checkpoint_every', 'keep_checkpoints', 'keep_every', 'patience'):
        if t.get(key, 0) < 0:
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
    safety.check_workdir_config(workdir, config, force=force)
    t = config.train

    # ---------------------------------------------------------------- Mesh
    mesh = parallel.make_mesh(config.parallel)
    rules = parallel.rules_from_config(config.parallel)
    parallel.host_batch_rows(t.batch_size, mesh)
    use_pmap = pmap_lib.uses_pmap(config.parallel, mesh)  # strategy 'pmap' (else 'mesh')
    if is_main:
        path = os.path.join(workdir, safety.CONFIG_FILE)
        with open(path + '.tmp', 'w') as f:  # atomic: other processes may be reading it
            f.write(config_lib.to_json(config))
        os.replace(path + '.tmp', path)
    logging.info('mesh: %s', parallel.describe_mesh(mesh))

    # ---------------------------------------------------------------- Input
    if is_main:
        data_lib.prepare(config.data)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices('jaxbig: data prepared')
    host = {'process_index': jax.process_index(), 'process_count': jax.process_count()}
    train_data = data_lib.build_pipeline(
        config.data, split=config.data.train_split, batch_size=t.batch_size, seed=t.seed, **host
    )
    batch_sharding = parallel.batch_sharding(mesh)

    def to_global(batch):
        return parallel.to_global(batch, batch_sharding)

    # ---------------------------------------------------------------- Model, loss, optimizer
    model = models.from_config(config)
    loss_module = losses.get_loss_module(config.loss.name)
    loss_fn = losses.bind(loss_module, config.loss)
    tx, schedule = optim.build_optimizer(config.optimizer, t.steps)
    example = loss_module.model_inputs(jax.tree.map(lambda x: x[:1], train_data.get_batch(0)))

    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        # ------------------------------------------------------------ Shard
        init = step_lib.init_fn(model, tx, example, t.seed)
        abstract_state = jax.eval_shape(init)
        boxed_params = jax.eval_shape(step_lib.init_fn(model, tx, example, t.seed, boxed=True))
        logical = parallel.state_logical_specs(abstract_state, nn.get_partition_spec(boxed_params))
        state_shardings = parallel.logical_to_shardings(logical, mesh, rules)

        # ------------------------------------------------------------ Resume or init
        checkpointer = ckpt_lib.Checkpointer(
            workdir, keep=t.get('keep_checkpoints', 3), keep_period=t.get('keep_every', 0) or None
        )
        state = checkpointer.restore_latest(
            ckpt_lib.abstract_with_shardings(abstract_state, state_shardings)
        )
        if state is None:
            state = jax.jit(init, out_shardings=state_shardings)()
            if config.get('init_from') and config.init_from.get('path'):
                params, _ = finetune.load_init_from(
                    config.init_from, state.params, state_shardings.params
                )
                state = state.replace(params=params)
        num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_state.params))
        logging.info(
            'parameters: %s; per device: params %.2f MB, optimizer state %.2f MB',
            f'{num_params:,}',
            parallel.bytes_per_device(state.params) / 2**20,
            parallel.bytes_per_device(state.opt_state) / 2**20,
        )

        # ------------------------------------------------------------ Compile steps
        train_fn = step_lib.make_train_step(
            model,
            loss_fn,
            config.loss,
            tx,
            schedule,
            config.optimizer.get('grad_accum_steps', 1),
            skip_nonfinite=t.get('skip_nonfinite_steps', False),
            poison_step=t.get('debug_nan_at_step', 0),
            pmap_axis=pmap_lib.AXIS if use_pmap else None,
        )
        first = int(jax.device_get(state.step))
        steps_per_call = t.get('steps_per_call', 1)
        stacked = steps_per_call > 1  # batches stacked [steps, batch, ...], one scan per call
        if stacked:
            train_fn = step_lib.multi_step(train_fn)
        if use_pmap:  # state replicated per local device, batch split over them; evals
            # and checkpoints see the mesh layout (`as_mesh`, no copies)
            train_step = pmap_lib.pmap_train_step(train_fn)
            state = pmap_lib.replicate(state)
            to_device = functools.partial(pmap_lib.shard_batch, stacked=stacked)
            as_mesh = functools.partial(pmap_lib.to_mesh, shardings=state_shardings)
        else:
            sharding = parallel.batch_sharding(mesh, stacked=stacked)
            train_step = step_lib.jit_train_step(train_fn, state_shardings, sharding)
            to_device = functools.partial(parallel.to_global, sharding=sharding)
            as_mesh = lambda s: s  # noqa: E731
        eval_step = step_lib.jit_eval_step(
            step_lib.make_eval_step(model, loss_fn, config.loss),
            state_shardings.params,
            batch_sharding,
        )

        # ------------------------------------------------------------ Evals
        ctx = evals_lib.EvalContext(
            config=config,
            model=model,
            loss_module=loss_module,
            mesh=mesh,
            rules=rules,
            params_shardings=state_shardings.params,
            to_global=to_global,
            eval_step=eval_step,
            workdir=workdir,
            **host,
        )
        evaluators = evals_lib.build_evaluators(config, ctx)

        # ------------------------------------------------------------ Loop
        writer = writers.MetricWriter(workdir)
        watch = safety.NonFiniteWatch(skip=t.get('skip_nonfinite_steps', False))
        tokens_per_batch = _tokens_per_batch(train_data.get_batch(0)) * jax.process_count()
        progress = _progress_bar(first, t.steps, enabled=is_main)
        meter = _Throughput(first)
        best = ckpt_lib.BestCheckpoint(
            workdir,
            metric=t.get('best_metric', ''),
            mode=t.get('best_mode', 'max'),
            patience=t.get('patience', 0),
        )
        best.resume(first)
        last_step = t.steps
        if best.stopped_early():  # remembered from an earlier launch
            logging.warning('this run stopped early (%s); raise train.patience to train on',
                            best.summary())
            last_step = first
        cadences = [t.log_every, t.checkpoint_every, *(every for every, _ in evaluators.values())]
        last, step = {}, first
        try:
            with safety.StopRequest() as stop:
                while step < last_step:
                    n = steps_in_call(step, last_step, steps_per_call, cadences)
                    batch = _host_batches(train_data, step, n, stacked=stacked)
                    state, metrics = train_step(state, to_device(batch))
                    step += n  # updates applied so far; below, everything due at `step`
                    watch.add(step, metrics)
                    progress.update(n)
                    row = {}
                    if step % t.log_every == 0 or step == t.steps:
                        watch.check()
                        metrics = {  # the last update's (a call of n updates returns [n])
                            k: float(np.asarray(v).reshape(-1)[-1])
                            for k, v in jax.device_get(metrics).items()
                        }
                        if metrics.pop('skipped', None) is not None:
                            metrics['skipped_steps'] = watch.skipped
                        row.update({f'train/{k}': v for k, v in metrics.items()})
                        row.update(meter.rates(step, tokens_per_batch))
                        row['train/num_params'] = num_params
                        progress.set_postfix(
                            loss=f'{metrics["total_loss"]:.4f}',
                            tok_s=f'{row.get("train/tokens_per_sec", 0):,.0f}',
                            refresh=False,
                        )
                    due = [ev for every, ev in evaluators.values()
                           if (every and step % every == 0) or step == t.steps]
                    if due:
                        watch.check()  # never evaluate (or keep as best) a diverged state
                    eval_params = as_mesh(state).params if due else None
                    for evaluator in due:
                        with meter.paused():
                            row.update(evaluator.run(eval_params))
                    if row:
                        writer.write(step, row)
                        last.update(row)
                    early_stop = best.metric in row and best.update(step, row, as_mesh(state))
                    stopping = stop.agreed(step, t.log_every) or early_stop
                    if (
                        stopping
                        or step == t.steps
                        or (t.checkpoint_every and step % t.checkpoint_every == 0)
                    ):
                        watch.check()
                        checkpointer.save(step, as_mesh(state), force=True)
                    if early_stop:
                        logging.warning('early stop at step %d: %s', step, best.summary())
                        break
                    if stopping:
                        logging.warning(
                            'stopped at step %d; rerun the same command to resume', step
                        )
                        break
        finally:
            progress.close()
            checkpointer.wait()
            checkpointer.close()
            best.close()
            writer.close()
    if is_main:
        writers.plot_loss_curve(workdir)
    return last


def steps_in_call(step: int, last_step: int, steps_per_call: int, cadences) -> int:
    """Updates the next compiled call runs, after update `step`: `steps_per_call`, cut short
    at `last_step` and at the next multiple of each nonzero cadence (log, eval, checkpoint),
    so whatever is due at a step sees exactly the state after that step. A cadence that
    `steps_per_call` does not divide makes calls of other lengths (each compiles once)."""
    end = min(step + steps_per_call, last_step)
    for every in cadences:
        if every:
            end = min(end, (step // every + 1) * every)
    return end - step


def _host_batches(data, step: int, n: int, *, stacked: bool):
    """The host batches of updates step + 1 .. step + n (batch index = update - 1): one
    batch, or with `stacked` all n stacked on a leading steps axis [n, batch, ...]."""
    if not stacked:
        return data.get_batch(step)
    batches = [data.get_batch(i) for i in range(step, step + n)]
    return jax.tree.map(lambda *xs: np.stack(xs), *batches)


class _Throughput:
    """Steps/s and tokens/s between log points, excluding time spent in evaluators."""

    def __init__(self, step: int):
        self.step, self.start, self.excluded = step, time.perf_counter(), 0.0

    def rates(self, step: int, tokens_per_batch: int) -> dict[str, float]:
        seconds = max(time.perf_counter() - self.start - self.excluded, 1e-9)
        steps = step - self.step
        self.step, self.start, self.excluded = step, time.perf_counter(), 0.0
        out = {'train/steps_per_sec': steps / seconds}
        if tokens_per_batch:
            out['train/tokens_per_sec'] = steps * tokens_per_batch / seconds
        return out

    @contextlib.contextmanager
    def paused(self):
        t0 = time.perf_counter()
        yield
        self.excluded += time.perf_counter() - t0


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
