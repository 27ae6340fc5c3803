"""Devices, mesh, logical-axis sharding rules, and host-local -> global batches.

Mesh axes are ('data', 'fsdp', 'expert', 'tensor'), sized by `config.parallel` (-1 = the
rest of the devices). Model parameters and activations carry *logical* axis names ('embed',
'heads', 'mlp', 'vocab', 'batch', ...); `config.parallel.rules` maps them to mesh axes, so a
sharding strategy is a config choice:

    pure data parallel   data=-1                 (params replicated, batch split)
    FSDP                 fsdp=-1                 (params split along 'embed' / 'conv_out' /
                                                  'lstm_in', batch split)
    tensor parallel      tensor=N                (heads / mlp / vocab / lstm_hidden split)
    expert parallel      expert=E                (a MoE layer's experts split over E devices;
                                                  the batch too: the rest of the model sees
                                                  'expert' as more data parallelism)

Each model's logical names need a rule here (tests/test_sharding.py checks the GPT, LSTM,
ResNet and MLP: every parameter named, every name ruled). A dimension its mesh axes do not
divide (a 25-word vocabulary under tensor=2) is replicated instead (`fit_spec`).

A mesh axis is used at most once per array: flax skips a rule whose mesh axis an earlier
rule of the same array already took (so 'batch' -> (data, fsdp) wins over 'embed' -> fsdp
for activations, while parameters, which have no 'batch' axis, get 'embed' -> fsdp).
"""

from __future__ import annotations

import logging
import math

import flax.linen as nn
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxbig.errors import ConfigError

AXES = ('data', 'fsdp', 'expert', 'tensor')
BATCH_AXES = ('data', 'fsdp', 'expert')

DEFAULT_RULES = (
    ('batch', ('data', 'fsdp', 'expert')),
    ('vocab', 'tensor'),
    ('heads', 'tensor'),
    ('mlp', 'tensor'),
    ('embed', 'fsdp'),
    ('conv_out', 'fsdp'),  # ResNet conv kernels [kh, kw, in, out] and GroupNorm [out]
    ('conv_in', None),
    ('lstm_hidden', 'tensor'),  # LSTM kernels [in, hidden] per gate and biases [hidden]
    ('lstm_in', 'fsdp'),
    ('kv', None),
    ('length', None),
    ('layers', None),
    ('expert', 'expert'),  # a MoE layer's stacked experts (jaxbig.models.moe)
    ('expert_batch', ('data', 'fsdp')),  # rows of tokens dispatched to the experts
)


def mesh_shape(cfg, num_devices: int) -> tuple[int, ...]:
    """Resolves the AXES' sizes (data, fsdp, expert, tensor); at most one may be -1 (the
    rest)."""
    sizes = [int(cfg.get(a, 1)) for a in AXES]
    if sizes.count(-1) > 1:
        raise ConfigError(f'parallel: only one of data/fsdp/expert/tensor may be -1, got {sizes}')
    if any(s == 0 or s < -1 for s in sizes):
        raise ConfigError(
            f'parallel: mesh sizes must be positive or -1, got {dict(zip(AXES, sizes))}'
        )
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ConfigError(
                f'parallel: {num_devices} devices do not divide into {dict(zip(AXES, sizes))}'
            )
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ConfigError(
            f'parallel: mesh {dict(zip(AXES, sizes))} needs {math.prod(sizes)} '
            f'devices but {num_devices} are available'
        )
    return tuple(sizes)


def make_mesh(cfg, devices=None) -> jax.sharding.Mesh:
    """The (data, fsdp, expert, tensor) mesh of `cfg` over `devices` (default all), laid out
    on a TPU's physical torus by jax; a shape that needs a physical axis split across mesh
    axes (data=2 x fsdp=64 on v5p-256's 4x4x8) is allowed to split it."""
    devices = devices if devices is not None else jax.devices()
    shape = mesh_shape(cfg, len(devices))
    types = (jax.sharding.AxisType.Auto,) * len(AXES)
    try:
        return jax.make_mesh(shape, AXES, axis_types=types, devices=devices)
    except NotImplementedError:
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
        return jax.sharding.Mesh(grid, AXES, axis_types=types)


def rules_from_config(cfg) -> tuple:
    """`config.parallel.rules` (list of [logical, mesh axis | [axes] | None]) as flax rules."""
    rules = cfg.get('rules', None) or DEFAULT_RULES
    out = []
    for rule in rules:
        name, axes = rule
        if isinstance(axes, list):
            axes = tuple(axes)
        for a in axes if isinstance(axes, tuple) else (axes,):
            if a is not None and a not in AXES:
                raise ConfigError(
                    f'parallel.rules: {name!r} maps to unknown mesh axis {a!r} (mesh axes: {AXES})'
                )
        out.append((name, axes))
    return tuple(out)


def batch_sharding(mesh, *, stacked: bool = False) -> NamedSharding:
    """Leading (batch) dimension split over data x fsdp x expert. stacked: batches stacked on a
    leading steps axis [steps, batch, ...] (step.multi_step); the steps axis is not split."""
    return NamedSharding(mesh, P(None, BATCH_AXES) if stacked else P(BATCH_AXES))


def data_parallel_size(mesh) -> int:
    return math.prod(mesh.shape.get(a, 1) for a in BATCH_AXES)


def to_global(local_batch: dict, sharding: NamedSharding) -> dict:
    """Host-local numpy batch (this process's rows) -> global jax arrays."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def _path_key(path) -> tuple:
    return tuple(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path)


def _mesh_axes_size(axes, mesh_shape) -> int:
    if axes is None:
        return 1
    return math.prod(mesh_shape.get(a, 1) for a in (axes if isinstance(axes, tuple) else (axes,)))


def fit_spec(spec: P, shape: tuple, mesh_shape: dict, rules, name: str = '') -> P:
    """Drops the logical names of `spec` whose mesh axes do not divide their dimension of
    `shape` (e.g. a 25-word vocabulary under tensor=2): that dimension is replicated instead
    (logged). Repeated until stable, since a freed mesh axis may go to another dimension."""
    names = list(spec) + [None] * (len(shape) - len(spec))
    while True:
        mesh_axes = nn.logical_to_mesh_axes(P(*names), rules)
        bad = [
            i for i, (dim, axes) in enumerate(zip(shape, mesh_axes))
            if dim % _mesh_axes_size(axes, mesh_shape)
        ]
        if not bad:
            return P(*names)
        i = bad[0]
        logging.info(
            'sharding: %s dimension %d (%s, size %d) does not split over mesh axes %s; '
            'replicated along it', name or 'array', i, names[i], shape[i], mesh_axes[i],
        )
        names[i] = None


def fit_specs(specs, abstract, mesh, rules):
    """`fit_spec` over a tree: `specs` (PartitionSpecs, e.g. `nn.get_partition_spec` of a
    boxed init) and `abstract` (arrays or ShapeDtypeStructs of the same structure)."""
    mesh_shape = dict(mesh.shape)
    return jax.tree.map(
        lambda spec, x: fit_spec(spec, x.shape, mesh_shape, rules),
        specs, abstract, is_leaf=lambda x: isinstance(x, P),
    )


def state_logical_specs(abstract_state, param_specs, params_attr: str = 'params',
                        mesh_shape: dict | None = None, rules=None):
    """Logical PartitionSpecs for a whole train state.

    Parameters take `param_specs` (from `nn.get_partition_spec` on the boxed init); any other
    leaf whose tree path ends with a parameter's path and has its shape (optimizer moments)
    takes that parameter's spec; everything else (counters, rng) is replicated. Dimensions
    their mesh axes do not divide are replicated (`fit_spec`); `mesh_shape` ({axis: size})
    and `rules` default to the current `jax.set_mesh` mesh and `nn.logical_axis_rules`.
    """
    if mesh_shape is None:
        mesh_shape = dict(jax.sharding.get_abstract_mesh().shape)
    rules = nn.get_logical_axis_rules() if rules is None else rules
    params = getattr(abstract_state, params_attr)
    by_path = {}
    for (path, leaf), (_, spec) in zip(
        jax.tree_util.tree_flatten_with_path(params)[0],
        jax.tree_util.tree_flatten_with_path(param_specs, is_leaf=lambda x: isinstance(x, P))[0],
    ):
        if mesh_shape:
            spec = fit_spec(spec, leaf.shape, mesh_shape, rules, '/'.join(_path_key(path)))
        by_path[_path_key(path)] = (leaf.shape, spec)
    lengths = sorted({len(k) for k in by_path}, reverse=True)

    def spec_for(path, leaf):
        key = _path_key(path)
        for n in lengths:
            hit = by_path.get(key[-n:]) if len(key) >= n else None
            if hit is not None and hit[0] == leaf.shape:
                return hit[1]
        return P()

    return jax.tree_util.tree_map_with_path(spec_for, abstract_state)


def logical_to_shardings(logical_specs, mesh, rules):
    return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def bytes_per_device(tree) -> int:
    """Bytes this tree occupies on the most loaded device (its shards, not the global size)."""
    per_device = {}
    for leaf in jax.tree.leaves(tree):
        if not hasattr(leaf, 'addressable_shards'):
            continue
        for shard in leaf.addressable_shards:
            per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
    return max(per_device.values(), default=0)


def describe_mesh(mesh) -> str:
    return ' x '.join(f'{name}={size}' for name, size in mesh.shape.items()) + (
        f' over {mesh.devices.size} {jax.devices()[0].platform} devices, '
        f'{jax.process_count()} process(es)'
    )


def maybe_initialize_distributed(cfg) -> None:
    """Joins a multi-process runtime when the config or environment asks for one.

    `parallel.coordinator_address` / `num_processes` / `process_id` set explicitly, or
    JAXBIG_COORDINATOR / JAXBIG_NUM_PROCESSES / JAXBIG_PROCESS_ID in the environment (set by
    the launchers), or `parallel.distributed=True` to let JAX auto-detect (TPU pods, SLURM).
    """
    import os

    address = cfg.get('coordinator_address', '') or os.environ.get('JAXBIG_COORDINATOR', '')
    if address:
        num = int(cfg.get('num_processes', 0) or os.environ.get('JAXBIG_NUM_PROCESSES', 0))
        pid = cfg.get('process_id', -1)
        pid = int(pid if pid >= 0 else os.environ.get('JAXBIG_PROCESS_ID', -1))
        if num < 1 or pid < 0:
            raise ConfigError(
                'parallel.coordinator_address is set; also set num_processes and '
                'process_id (or JAXBIG_NUM_PROCESSES / JAXBIG_PROCESS_ID)'
            )
        local = cfg.get('local_device_count', 0)
        if local:
            jax.config.update('jax_num_cpu_devices', int(local))
        jax.distributed.initialize(coordinator_address=address, num_processes=num, process_id=pid)
    elif cfg.get('distributed', False):
        jax.distributed.initialize()
    if jax.process_count() > 1:
        logging.info('process %d of %d', jax.process_index(), jax.process_count())
        _no_compilation_cache_across_cpu_processes()


def _no_compilation_cache_across_cpu_processes() -> None:
    """On jaxlib >= 0.11's CPU client, a program with cross-process (gloo) collectives read
    back from the persistent compilation cache deadlocks at its first run (each process waits
    in an all-reduce forever; jaxlib 0.10 does not), so a multi-process CPU run compiles
    afresh. TPU / GPU runs keep the cache."""
    if jax.default_backend() != 'cpu' or not jax.config.jax_enable_compilation_cache:
        return
    if tuple(int(p) for p in jax.lib.__version__.split('.')[:2]) < (0, 11):
        return
    jax.config.update('jax_enable_compilation_cache', False)
    logging.info('multi-process CPU run: the persistent compilation cache is off (a cached '
                 'program with cross-process collectives deadlocks on jaxlib >= 0.11)')


def host_batch_rows(global_batch: int, mesh) -> int:
    """Rows of the global batch this process feeds; checks divisibility."""
    dp = data_parallel_size(mesh)
    if global_batch % dp:
        raise ConfigError(
            f'train.batch_size={global_batch} is not divisible by the data-parallel '
            f'size data*fsdp={dp}'
        )
    return global_batch // jax.process_count()


def micro_batch_rows(global_batch: int, accum_steps: int, mesh) -> int:
    """Rows of one micro-batch (`optimizer.grad_accum_steps`); each must split evenly over
    the data-parallel devices, as the whole batch does, or every micro-step would reshard."""
    rows, dp = global_batch // max(accum_steps, 1), data_parallel_size(mesh)
    if rows % dp:
        raise ConfigError(
            f'train.batch_size={global_batch} / optimizer.grad_accum_steps={accum_steps} = '
            f'{rows} rows per micro-batch, not divisible by the data-parallel size '
            f'data*fsdp={dp}; choose a batch_size divisible by {accum_steps * dp}')
    return rows
