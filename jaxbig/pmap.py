"""The classic data-parallel path (`parallel.strategy='pmap'`): replicated state, `jax.pmap`.

Every local device holds a full copy of the TrainState (leading axis = local devices) and
its own slice of the host batch; `make_train_step(..., pmap_axis=AXIS)` adds the sums and
counts of loss, metrics and gradients over all devices of all processes with `lax.psum` and
divides once (jaxbig/aggregate.py), so the replicas stay identical and the losses and
updates equal the mesh path's, however unevenly the valid targets fall on the devices. Losses whose examples interact
(contrastive negatives) gather the embeddings of every device with `global_rows` and so see
the global batch, as under the mesh path.

    state = replicate(state)                  # mesh (global, replicated) -> [n, ...]
    train_step = pmap_train_step(make_train_step(..., pmap_axis=AXIS))
    state, metrics = train_step(state, shard_batch(host_batch))   # metrics unreplicated
    checkpointer.save(step, to_mesh(state, state_shardings))     # same format as 'mesh'

Checkpoints are written in the mesh path's format (one global, replicated array per
leaf), so the two strategies resume each other's runs. In this JAX (0.10) `jax.pmap` is
implemented on `jit` + `shard_map` and documented as the "old way" (use `jax.shard_map`);
it emits no deprecation warning, but `jax.device_put_replicated` / `device_put_sharded`
are removed, so this module builds the replicated arrays with `jax.device_put` and
`jax.make_array_from_single_device_arrays`.
"""

from __future__ import annotations

import contextlib
import functools

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxbig.config import ConfigError

AXIS = 'batch'


def in_pmap() -> bool:
    """True while tracing under `pmap_train_step` / `pmap_eval_step` (AXIS is bound)."""
    try:
        jax.lax.axis_size(AXIS)
    except NameError:  # unbound axis name: jit on a mesh, or eager
        return False
    return True


def global_rows(x):
    """Under pmap, this device's rows x [n, ...] -> the global batch's [devices * n, ...]
    (`all_gather` over AXIS, tiled, in device order; all processes' devices); elsewhere x.

    For losses that couple the examples of a batch (contrastive negatives). Every device
    then computes the global loss L and reports it as Mean(c * L, c) with c = C / n_dev,
    its share of the C global rows (`replica_share`). The gradient of the gather is a
    `psum_scatter`, so device d's parameter gradient is c (n_dev * dL/dparams through d's
    rows + dL/dparams for parameters used outside the gather, e.g. a logit scale);
    `step.py`'s `psum` adds them over d and divides by the summed count C: exactly the
    one-device gradient of L.
    """
    return jax.lax.all_gather(x, AXIS, tiled=True) if in_pmap() else x


def replica_share() -> float:
    """1 / the number of pmap devices while tracing under pmap, else 1. A loss computed on
    the gathered global batch (`global_rows`) is the same on every device: each reports
    this share of its global count, so the counts `step.py` adds over devices (`psum`)
    total the global count once."""
    return 1.0 / jax.lax.axis_size(AXIS) if in_pmap() else 1.0


def local_sharding() -> NamedSharding:
    """Leading axis split over this process's devices: the layout pmap expects."""
    return NamedSharding(Mesh(np.array(jax.local_devices()), (AXIS,)), P(AXIS))


STRATEGIES = ('mesh', 'pmap')


def uses_pmap(parallel_config, mesh) -> bool:
    """True for `parallel.strategy='pmap'` (after checking it fits `mesh`); False for 'mesh'."""
    strategy = parallel_config.get('strategy', 'mesh')
    if strategy not in STRATEGIES:
        raise ConfigError(f'parallel.strategy={strategy!r}: expected one of {STRATEGIES}')
    if strategy == 'pmap':
        check_mesh(mesh)
    return strategy == 'pmap'


def check_mesh(mesh) -> None:
    """pmap replicates the state, so the mesh must be pure data parallel."""
    if any(mesh.shape.get(a, 1) != 1 for a in ('fsdp', 'expert', 'tensor')):
        raise ConfigError(
            f"parallel.strategy='pmap' replicates parameters; it needs fsdp=1, expert=1 and "
            f'tensor=1, got {dict(mesh.shape)}'
        )


@contextlib.contextmanager
def _outside_mesh():
    """pmap (a shard_map over its own mesh) and the per-device ops here must not run under
    train.py's `jax.set_mesh(mesh)`; without a mesh the models' logical constraints are
    no-ops."""
    with jax.set_mesh(None), nn.logical_axis_rules(()):
        yield


@functools.cache
def _reshaper(mesh: Mesh, add: bool):
    """One compiled function for a whole tree on this process's devices: add=True maps
    leaves replicated over `mesh` to their [devices, ...] stack (each device its own copy);
    add=False the reverse (each device keeps its replica). Per-leaf, per-device eager ops
    instead would compile once per (shape, device): seconds for a model's state."""
    fn = (lambda x: x[None]) if add else (lambda x: x[0])  # noqa: E731
    specs = (P(), P(AXIS)) if add else (P(AXIS), P())
    return jax.jit(
        jax.shard_map(
            lambda tree: jax.tree.map(fn, tree),
            mesh=mesh, in_specs=specs[0], out_specs=specs[1], check_vma=False,
        )
    )


def _on_devices(x, sharding: NamedSharding):
    """x's per-device copies as an array with `sharding` (fully replicated, same shape), no
    transfer when x is a replicated array on those devices; else from the host."""
    devices = sharding.addressable_devices
    if isinstance(x, jax.Array) and x.is_fully_replicated:
        by_device = {s.device: s.data for s in x.addressable_shards}
        if all(d in by_device for d in devices):
            arrays = [by_device[d] for d in devices]
            return jax.make_array_from_single_device_arrays(x.shape, sharding, arrays)
    return jax.device_put(np.asarray(x), sharding)


def replicate(tree):
    """Each leaf (global replicated array, or host value) -> [local devices, ...]."""
    mesh = local_sharding().mesh
    with _outside_mesh():
        local = jax.tree.map(lambda x: _on_devices(x, NamedSharding(mesh, P())), tree)
        return _reshaper(mesh, True)(local)


def unreplicate(tree):
    """[local devices, ...] -> the first replica (all replicas are equal), read from the
    first device's own buffer: `x[0]` of an array over the local devices would compile a
    gather with an all-reduce over them, one more collective program every step."""
    def first(x):
        if isinstance(x, jax.Array) and len(x.addressable_shards) > 1:
            return x.addressable_data(0)[0]
        return x[0]

    with _outside_mesh():
        return jax.tree.map(first, tree)


def to_mesh(tree, shardings):
    """Replicated pmap state -> global arrays with `shardings` (fully replicated ones), the
    mesh path's layout: what checkpoints hold. Uses each device's own copy (no transfer)."""
    for s in jax.tree.leaves(shardings):
        if not s.is_fully_replicated:
            raise ValueError(f'pmap state can only become a replicated array, not {s}')
    mesh = local_sharding().mesh
    with _outside_mesh():
        local = _reshaper(mesh, False)(tree)
        return jax.tree.map(_on_devices, local, shardings)


def shard_batch(batch: dict, *, stacked: bool = False) -> dict:
    """Host-local numpy batch [rows, ...] -> [local devices, rows / devices, ...] on device.
    stacked: batches stacked on a leading steps axis (step.multi_step), [steps, rows, ...]
    -> [local devices, steps, rows / devices, ...]."""
    sharding = local_sharding()
    n = sharding.mesh.size

    def split(x):
        rows = x.shape[1] if stacked else x.shape[0]
        if rows % n:
            raise ValueError(f'host batch of {rows} rows does not split over {n} devices')
        if stacked:
            x = x.reshape(x.shape[0], n, rows // n, *x.shape[2:]).swapaxes(0, 1)
            return jax.device_put(np.ascontiguousarray(x), sharding)
        return jax.device_put(x.reshape(n, rows // n, *x.shape[1:]), sharding)

    return jax.tree.map(split, batch)


def pmap_train_step(train_step):
    """`train_step` from `step.make_train_step(..., pmap_axis=AXIS)` -> pmapped, state
    donated; returns (replicated state, metrics of one replica) like the jitted step. The
    metrics stay on this process's devices (fetch them with `jax.device_get`)."""
    pmapped = jax.pmap(train_step, axis_name=AXIS, donate_argnums=0)

    def step(state, batch):
        with _outside_mesh():
            state, metrics = pmapped(state, batch)
        return state, unreplicate(metrics)

    step.pmapped = pmapped
    return step


def pmap_eval_step(eval_step):
    """`eval_step(params, batch) -> metrics` -> pmapped over replicated params and a
    `shard_batch` batch; the metrics' sums and counts (jaxbig/aggregate.py) are added over
    all devices and come back as numpy (evaluators add them up under train.py's global
    mesh, which with several processes rejects arrays that live on one process's devices)."""
    pmapped = jax.pmap(lambda p, b: jax.lax.psum(eval_step(p, b), AXIS), axis_name=AXIS)

    def step(params, batch):
        with _outside_mesh():
            return jax.device_get(unreplicate(pmapped(params, batch)))

    step.pmapped = pmapped
    return step
