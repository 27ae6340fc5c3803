"""The train state and the two compiled functions every task shares.

        train_step(state, batch) -> (state, metrics)      one optimizer update
        eval_step(params, batch) -> metrics               no gradients, train=False

`multi_step(train_step)` runs several updates in one compiled call (`train.steps_per_call`).

Both are built from (model, loss_fn, optax chain); nothing here knows which task it runs.
Gradient accumulation splits the batch into `accum_steps` micro-batches inside the step
(a `lax.scan`), so one train_step is always one update whatever the accumulation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxbig import aggregate, pruning
from jaxbig.models import layout


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training; saved and restored whole.

    step: int32 scalar (updates applied). params / opt_state: pytrees.
    rng: uint32[2] base key; step k uses fold_in(rng, k), so resume is exact.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def init_fn(
    model: nn.Module,
    tx: optax.GradientTransformation,
    example_inputs,
    seed: int,
    *,
    boxed: bool = False,
) -> Callable[[], TrainState]:
    """Returns `() -> TrainState`; with `boxed`, params keep their logical-axis boxes."""

    def init():
        rng = jax.random.PRNGKey(seed)
        init_rng, state_rng = jax.random.split(rng)
        # the same numbers whatever model.scan_layers (a speed switch, not another init)
        params = layout.init_params(
            model, {'params': init_rng, 'dropout': init_rng}, *example_inputs, train=False)
        if boxed:
            return params
        params = nn.unbox(params)
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=state_rng
        )

    return init


def _split_micro_batches(batch, accum_steps: int):
    """[B, ...] -> [accum, B // accum, ...]; micro-batch j takes rows j, j+accum, ... so each
    device's contiguous block of rows contributes to every micro-batch (no resharding)."""

    def split(x):
        if x.shape[0] % accum_steps:
            raise ValueError(
                f'batch of {x.shape[0]} rows does not split into {accum_steps} '
                'micro-batches (optimizer.grad_accum_steps)'
            )
        x = x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return jax.tree.map(split, batch)


def with_row_ids(batch, pmap_axis: str | None = None):
    """batch plus `row_ids` int32 [rows]: each row's index in the global batch (under pmap,
    device d holds rows [d * rows, (d + 1) * rows)). Split with the batch into micro-batches,
    so per-example randomness keyed by it is the same however the batch is split."""
    rows = jax.tree.leaves(batch)[0].shape[0]
    offset = 0 if pmap_axis is None else jax.lax.axis_index(pmap_axis) * rows
    return dict(batch, row_ids=offset + jnp.arange(rows, dtype=jnp.int32))


def make_train_step(
    model: nn.Module,
    loss_fn,
    loss_config,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule | None = None,
    accum_steps: int = 1,
    *,
    skip_nonfinite: bool = False,
    poison_step: int = 0,
    pmap_axis: str | None = None,
    trainable=None,
    coupled=None,
):
    """Builds the (un-jitted) train step; `train.py` jits it with shardings and donation.

    Aggregation (jaxbig/aggregate.py): the loss returns Mean(summed loss, count); the step
    differentiates the sum, adds sums and counts over the micro-batches and (pmap) devices,
    and divides once by the total count, so the update and `loss` are those of the whole
    global batch whatever the accumulation or device count, however unevenly the valid
    targets fall. Metrics come back divided (floats), plus `loss_count`: what the loss
    counted over the whole update (valid targets, examples, views).

    skip_nonfinite: an update whose loss or gradient norm is not finite is dropped (params
      and optimizer state unchanged; the step counter still advances) and counted in
      metrics['skipped'].
    pmap_axis: under `jax.pmap`, the mapped axis name: sums and counts of loss, metrics and
      gradients are added over it (`lax.psum`) before the one division, so replicas stay
      identical.
    trainable: a tree of bools matching the params (None = all): `grad_norm` (and so the
      non-finite guard) reads the trainable parameters' gradients only, the norm clipping
      uses; frozen ones are updated by nothing anyway.
    coupled: (embed, loss_from_embeddings) of a loss whose examples interact
      (`losses.coupled_parts`). With accum_steps > 1 the step then uses a gradient cache:
      it embeds each micro-batch without gradients, computes the loss on all of them at
      once (every example meets the whole batch's negatives) and backpropagates each
      micro-batch through its embeddings' cached gradients — the full batch's objective
      and gradient, with one micro-batch's activations at a time (a second forward pass).
    poison_step: for tests of the guards, update number `poison_step` (1-based) multiplies
      the loss by NaN inside the differentiated function, so the loss *and* every gradient
      are NaN (as in a real divergence). 0 = off; not compiled in when off.
    """

    def objective_of(loss, poisoned, normalized: bool):
        """What is differentiated: the summed loss, divided by the whole update's count
        when that is known here (`normalized`: no accumulation, or the gradient cache's
        all-at-once loss), so the backward pass itself is scaled and no gradient-sized
        division follows (XLA would keep a second copy of the gradients for it)."""
        if poison_step:
            loss = loss.replace(total=loss.total * jnp.where(poisoned, jnp.nan, 1.0))
        objective = loss.total
        if normalized:
            count = loss.count if pmap_axis is None else jax.lax.psum(loss.count, pmap_axis)
            objective = objective / jax.lax.stop_gradient(jnp.maximum(count, 1.0))
        return objective, loss

    def loss_and_grads(params, batch, rngs, poisoned, normalized=False):
        def f(p):
            loss, metrics = loss_fn(model.apply, p, batch, rngs, loss_config, train=True)
            aggregate.check(dict(metrics, total_loss=loss), 'loss_fn')
            objective, loss = objective_of(loss, poisoned, normalized)
            return objective, (loss, metrics)

        (_, (loss, metrics)), grads = jax.value_and_grad(f, has_aux=True)(params)
        return loss, metrics, grads

    def cached_embedding_grads(params, batch, rng, examples, poisoned):
        embed, loss_from_embeddings = coupled
        micro = _split_micro_batches(batch, accum_steps)
        rngs = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(accum_steps))

        def embed_one(p, mb, r):
            rngs = {'dropout': r, 'examples': examples}
            return embed(model.apply, p, mb, rngs, loss_config, train=True)

        embs = jax.lax.map(lambda xs: embed_one(params, *xs), (micro, rngs))  # [K, b, ...]
        flat = lambda t: jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), t)  # noqa: E731

        def objective(rows, shared):
            loss, metrics = loss_from_embeddings(
                {'rows': rows, 'shared': shared}, flat(micro), loss_config)
            aggregate.check(dict(metrics, total_loss=loss), 'loss_from_embeddings')
            objective, loss = objective_of(loss, poisoned, normalized=True)
            return objective, (loss, metrics)

        shared = jax.tree.map(lambda x: x[0], embs['shared'])  # equal in every micro-batch
        (_, (loss, metrics)), (d_rows, d_shared) = jax.value_and_grad(
            objective, argnums=(0, 1), has_aux=True)(flat(embs['rows']), shared)
        d_rows = jax.tree.map(lambda d, x: d.reshape(x.shape), d_rows, embs['rows'])

        def backprop(total, xs):
            j, mb, r, d = xs
            _, vjp = jax.vjp(lambda p: embed_one(p, mb, r), params)
            first = jax.tree.map(lambda g: jnp.where(j == 0, g, jnp.zeros_like(g)), d_shared)
            (g,) = vjp({'rows': d, 'shared': first})
            return jax.tree.map(jnp.add, total, g), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        grads, _ = jax.lax.scan(backprop, zeros, (jnp.arange(accum_steps), micro, rngs, d_rows))
        return loss, metrics, grads

    def train_step(state: TrainState, batch):
        # `examples`: the update's key, the same in every micro-batch and on every device,
        # for per-example randomness keyed by batch['row_ids'] (e.g. masked-LM masks);
        # `dropout`: its own key per micro-batch and device
        examples = jax.random.fold_in(state.rng, state.step)
        rng = examples
        if pmap_axis is not None:  # each device's rows get their own dropout masks
            rng = jax.random.fold_in(rng, jax.lax.axis_index(pmap_axis))
        batch = with_row_ids(batch, pmap_axis)
        poisoned = state.step + 1 == poison_step
        if accum_steps == 1:
            loss, metrics, grads = loss_and_grads(
                state.params, batch, {'dropout': rng, 'examples': examples}, poisoned,
                normalized=True)
        elif coupled is not None:
            loss, metrics, grads = cached_embedding_grads(state.params, batch, rng, examples,
                                                          poisoned)
        else:
            micro = _split_micro_batches(batch, accum_steps)

            def rngs_of(i):
                return {'dropout': jax.random.fold_in(rng, i), 'examples': examples}

            def body(carry, xs):
                i, mb = xs
                out = loss_and_grads(state.params, mb, rngs_of(i), poisoned)
                return jax.tree.map(jnp.add, carry, out), None

            zeros = jax.tree.map(
                jnp.zeros_like,
                jax.eval_shape(
                    loss_and_grads,
                    state.params,
                    jax.tree.map(lambda x: x[0], micro),
                    rngs_of(0),
                    poisoned,
                ),
            )
            (loss, metrics, grads), _ = jax.lax.scan(
                body, zeros, (jnp.arange(accum_steps), micro))
        if pmap_axis is not None:
            loss, metrics, grads = jax.lax.psum((loss, metrics, grads), pmap_axis)
        if accum_steps > 1 and coupled is None:  # the count was known only after the scan
            count = jnp.maximum(loss.count, 1.0)  # no valid target at all: zero gradient
            grads = jax.tree.map(lambda g: (g / count).astype(g.dtype), grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm = optax.tree.norm(grads if trainable is None else jax.tree.map(
            lambda g, t: g if t else jnp.zeros((), g.dtype), grads, trainable))
        metrics = dict(
            aggregate.values(metrics), total_loss=loss.value(), loss_count=loss.count,
            grad_norm=grad_norm, update_norm=optax.tree.norm(updates),
        )
        if skip_nonfinite:
            finite = jnp.isfinite(metrics['total_loss']) & jnp.isfinite(grad_norm)
            keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
            params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
            metrics['skipped'] = 1.0 - finite.astype(jnp.float32)
        metrics['param_norm'] = optax.tree.norm(params)  # of the params kept (after a skip)
        metrics.update(pruning.train_metrics(opt_state))  # 'sparsity' when pruning is on
        if schedule is not None:
            metrics['learning_rate'] = schedule(state.step)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return train_step


def multi_step(train_step):
    """train_step -> multi(state, batches) -> (state, metrics): one update per batch of
    `batches` (every leaf stacked on a leading steps axis [n, ...]) in one `lax.scan`, so
    one compiled call runs n updates. metrics come back stacked, [n] per key. The updates
    are those of n train_step calls: the step counter, and so the rng and the schedule,
    advance inside the scan."""

    def multi(state, batches):
        return jax.lax.scan(train_step, state, batches)

    return multi


def make_eval_step(model: nn.Module, loss_fn, loss_config):
    """eval_step(params, batch) -> metrics, deterministic: the loss's Means / Sums of this
    batch, undivided (jaxbig/aggregate.py), so an evaluator adds them over its batches and
    divides once."""

    def eval_step(params, batch):
        loss, metrics = loss_fn(model.apply, params, batch, {}, loss_config, train=False)
        metrics = dict(metrics, total_loss=loss)
        aggregate.check(metrics, 'loss_fn')
        return metrics

    return eval_step


def jit_train_step(train_step, state_shardings, batch_sharding):
    return jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, None),
        donate_argnums=(0,),
    )


def jit_eval_step(eval_step, params_shardings, batch_sharding):
    return jax.jit(eval_step, in_shardings=(params_shardings, batch_sharding))
