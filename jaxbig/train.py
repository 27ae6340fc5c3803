"""The one training loop: config -> mesh -> data -> model/loss/optimizer -> sharded state
-> compiled step -> loop (log, evaluate, checkpoint) -> outputs in the workdir.

Every task (LM pretraining, contrastive, fine-tuning) runs through `train()`; only the
names in the config change. Read it top to bottom.
"""

from __future__ import annotations

import collections
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
from jaxbig import defaults, experiment, finetune, optim, parallel, safety, writers
from jaxbig import run as run_lib
from jaxbig import pmap as pmap_lib
from jaxbig import step as step_lib
from jaxbig.data import prefetch as prefetch_lib


def validate(config):
    """Config checks that need no devices; mesh-dependent checks happen in `train`."""
    t = config.train
    for key in ('steps', 'batch_size', 'log_every', 'steps_per_call'):
        if t[key] < 1:
            raise config_lib.ConfigError(f'train.{key}={t[key]}: must be >= 1')
    if t.best_mode not in ('max', 'min'):
        raise config_lib.ConfigError(f"train.best_mode={t.best_mode!r}: expected 'max' or 'min'")
    for key in ('eval_every', 'checkpoint_every', 'keep_checkpoints', 'keep_every', 'patience'):
        if t[key] < 0:
            raise config_lib.ConfigError(f'train.{key}={t[key]}: must be >= 0 (0 = never)')
    profile = tuple(t.profile_steps)
    if profile and (len(profile) != 2 or not 0 <= profile[0] < profile[1]):
        raise config_lib.ConfigError(
            f'train.profile_steps={t.profile_steps}: expected (first, last) with '
            f'0 <= first < last (trace updates first+1 .. last), or () for off')
    optim.validate(config.optimizer)
    prefetch_lib.validate(config.data)
    accum = config.optimizer.grad_accum_steps
    if t.batch_size % accum:
        raise config_lib.ConfigError(
            f'train.batch_size={t.batch_size} is not divisible by '
            f'optimizer.grad_accum_steps={accum}'
        )


def train(config: ml_collections.ConfigDict, workdir: str, *, force: bool = False) -> dict:
    """Trains (or resumes) `config` in `workdir`; returns the last logged metrics.

    A fresh run that fails before its first update (a config error found while building
    the mesh, data, model or evaluators, or while compiling) leaves the workdir as it found
    it, so the corrected command starts cleanly.
    """
    experiment.resolve_auto(config)
    defaults.complete_data(config)  # keys a config built in code may lack (data.prefetch)
    validate(config)
    parallel.maybe_initialize_distributed(config.parallel)
    safety.check_workdir_config(workdir, config, force=force)
    guard = safety.FreshWorkdirGuard(workdir, enabled=jax.process_index() == 0)
    try:
        return _train(config, workdir, guard)
    except Exception:
        guard.undo()  # only while no update has completed in a fresh workdir
        raise


def _train(config, workdir: str, guard) -> dict:
    is_main = jax.process_index() == 0
    t = config.train

    # ---------------------------------------------------------------- Input
    if is_main:
        data_lib.prepare(config.data)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices('jaxbig: data prepared')
    host = run_lib.host_info()
    train_data = data_lib.build_pipeline(
        config.data, split=config.data.train_split, batch_size=t.batch_size, seed=t.seed, **host
    )

    # ---------------------------------------------------------------- Mesh, model, loss, optimizer,
    # shardings, eval step, evaluators: everything that can reject a config, before any write
    s = run_lib.setup(config, workdir, example_batch=train_data.get_batch(0))
    mesh, state_shardings = s.mesh, s.state_shardings
    parallel.micro_batch_rows(t.batch_size, config.optimizer.grad_accum_steps, mesh)
    use_pmap = pmap_lib.uses_pmap(config.parallel, mesh)  # strategy 'pmap' (else 'mesh')
    logging.info('mesh: %s', parallel.describe_mesh(mesh))
    if is_main:
        os.makedirs(workdir, exist_ok=True)
        path = os.path.join(workdir, safety.CONFIG_FILE)
        with open(path + '.tmp', 'w') as f:  # atomic: other processes may be reading it
            f.write(config_lib.to_json(config))
        os.replace(path + '.tmp', path)

    with jax.set_mesh(mesh), nn.logical_axis_rules(s.rules):
        # ------------------------------------------------------------ Resume or init
        checkpointer = ckpt_lib.Checkpointer(
            workdir, keep=t.keep_checkpoints, keep_period=t.keep_every or None
        )
        state = checkpointer.restore_latest(
            ckpt_lib.abstract_with_shardings(s.abstract_state, state_shardings)
        )
        if state is None:
            state = jax.jit(s.init, out_shardings=state_shardings)()
            if config.get('init_from') and config.init_from.get('path'):
                params, _ = finetune.load_init_from(
                    config.init_from, state.params, state_shardings.params
                )
                state = state.replace(params=params)
        num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(s.abstract_state.params))
        logging.info(
            'parameters: %s; per device: params %.2f MB, optimizer state %.2f MB',
            f'{num_params:,}',
            parallel.bytes_per_device(state.params) / 2**20,
            parallel.bytes_per_device(state.opt_state) / 2**20,
        )

        # ------------------------------------------------------------ Compile steps
        train_fn = run_lib.train_step_fn(config, s, pmap_axis=pmap_lib.AXIS if use_pmap else None)
        first = int(jax.device_get(state.step))
        steps_per_call = t.steps_per_call
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
        evaluators = s.evaluators

        # ------------------------------------------------------------ Loop
        writer = writers.MetricWriter(workdir)
        watch = safety.NonFiniteWatch(skip=t.skip_nonfinite_steps)
        batch_tokens = tokens_per_batch(train_data.get_batch(0)) * jax.process_count()
        progress = _progress_bar(first, t.steps, enabled=is_main)
        meter = _Throughput(first)
        best = ckpt_lib.BestCheckpoint(
            workdir,
            metric=t.best_metric,
            mode=t.best_mode,
            patience=t.patience,
        )
        best.resume(first)
        last_step = t.steps
        if best.stopped_early():  # remembered from an earlier launch
            logging.warning('this run stopped early (%s); raise train.patience to train on',
                            best.summary())
            last_step = first
        cadences = [t.log_every, t.checkpoint_every, *(every for every, _ in evaluators.values())]
        profiler = _Profiler(workdir, t.profile_steps, enabled=is_main)
        last, step = {}, first
        # the host batches of the calls to come, built data.prefetch calls ahead by a thread
        # (started once the signal handlers are in place; ended on leaving the `with`)
        calls = call_plan(first, last_step, steps_per_call, cadences, profiler.marks)
        host_batches = lambda call: _host_batches(train_data, *call, stacked=stacked)  # noqa: E731
        count_batch = getattr(train_data, 'batch_stats', None)  # a mixture's targets per source
        seen = collections.Counter()
        try:
            with (safety.StopRequest() as stop,
                  prefetch_lib.Prefetcher(host_batches, calls,
                                          depth=config.data.prefetch) as batches):
                for (_, n), batch in batches:  # calls (step, n) in order, from `first`
                    if count_batch is not None:
                        seen.update(count_batch(batch))
                    profiler.before(step)
                    state, metrics = train_step(state, to_device(batch))
                    step += n  # updates applied so far; below, everything due at `step`
                    profiler.after(step, metrics)
                    guard.commit()  # an update completed: the workdir is this run's now
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
                        row.update(meter.rates(step, batch_tokens))
                        row['train/num_params'] = num_params
                        if seen:  # the proportions actually seen since the last row
                            row.update(train_data.seen_row(seen))
                            seen.clear()
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
            profiler.close()
            progress.close()
            checkpointer.wait()
            checkpointer.close()
            best.close()
            writer.close()
    if is_main:
        writers.plot_loss_curve(workdir)
        writers.plot_moe_load(workdir)
        print(summary(config, workdir, last, step, best), flush=True)
    return last


def summary(config, workdir: str, last: dict, step: int, best) -> str:
    """The lines a finished launch prints: final metrics, best checkpoint, outputs, next."""
    lines = [f'jaxbig: trained {config.model.name} to step {step} of {config.train.steps} '
             f'in {workdir}']
    shown = [k for k in sorted(last) if k.startswith(('train/loss', 'train/total_loss'))]
    shown += [k for k in sorted(last) if not k.startswith('train/')]
    for k in shown:
        lines.append(f'  {k:28s} {last[k]:.6g}')
    if best.metric:
        lines.append(f'  best checkpoint: {best.summary()} ({os.path.join(workdir, "best")})')
    lines.append(f'  outputs: {os.path.join(workdir, "metrics.jsonl")}, '
                 f'{os.path.join(workdir, "loss_curve.png")}, '
                 f'{os.path.join(workdir, "checkpoints")}/ (tensorboard --logdir {workdir})')
    lines.append(f'  next: jaxbig eval --workdir {workdir}')
    if config.loss.name in ('autoregressive', 'distillation'):
        lines.append(f'        jaxbig generate --workdir {workdir} --prompt "def " '
                     f'--max-new-tokens 200')
    return '\n'.join(lines)


def steps_in_call(step: int, last_step: int, steps_per_call: int, cadences, marks=()) -> int:
    """Updates the next compiled call runs, after update `step`: `steps_per_call`, cut short
    at `last_step`, at the next multiple of each nonzero cadence (log, eval, checkpoint) and
    at the next of `marks` (absolute steps, e.g. a profile window's ends), so whatever is
    due at a step sees exactly the state after that step. A cadence that `steps_per_call`
    does not divide makes calls of other lengths (each compiles once)."""
    end = min(step + steps_per_call, last_step)
    for every in cadences:
        if every:
            end = min(end, (step // every + 1) * every)
    for mark in marks:
        if mark > step:
            end = min(end, mark)
    return end - step


def call_plan(first: int, last_step: int, steps_per_call: int, cadences, marks=()):
    """(step, n) of every compiled call from update `first` to `last_step`, in order: the
    call after update `step` runs n = `steps_in_call(...)` updates. Depends on nothing the
    loop computes, so the batches of coming calls can be built ahead (data.prefetch)."""
    step = first
    while step < last_step:
        n = steps_in_call(step, last_step, steps_per_call, cadences, marks)
        yield step, n
        step += n


class _Profiler:
    """`train.profile_steps = (first, last)`: a `jax.profiler` trace of updates first+1 ..
    last in `<workdir>/profile/` (TensorBoard's profile tab or Perfetto open it)."""

    def __init__(self, workdir: str, steps, *, enabled: bool):
        self.window = tuple(steps) if enabled and steps else ()
        self.marks = self.window
        self.directory = os.path.join(workdir, 'profile')
        self.active = False

    def before(self, step: int):
        if self.window and step == self.window[0] and not self.active:
            jax.profiler.start_trace(self.directory)
            self.active = True

    def after(self, step: int, metrics):
        if self.active and step >= self.window[1]:
            jax.block_until_ready(metrics)
            self.close()
            logging.info('profile of updates %d..%d written to %s', self.window[0] + 1,
                         self.window[1], self.directory)

    def close(self):
        if self.active:
            jax.profiler.stop_trace()
            self.active = False


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


def tokens_per_batch(batch) -> int:
    """Tokens per batch for token-sequence inputs (int [batch, seq]; arrays or
    ShapeDtypeStructs): `inputs`, an encoder-decoder's `enc_tokens` + `dec_inputs`, or a
    preference pair's `chosen_inputs` + `rejected_inputs`; 0 otherwise."""
    keys = (('inputs',) if 'inputs' in batch else ('chosen_inputs', 'rejected_inputs')
            if 'chosen_inputs' in batch else ('enc_tokens', 'dec_inputs'))
    xs = [batch.get(k) for k in keys]
    if all(x is not None and x.ndim == 2 and np.issubdtype(x.dtype, np.integer) for x in xs):
        return sum(int(x.size) for x in xs)
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
