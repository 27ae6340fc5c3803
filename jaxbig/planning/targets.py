"""Target machines `jaxbig plan` compiles for: their devices and published figures.

    v5p-N, v4-N     N TensorCores = N / 2 chips (megacore: one JAX device per chip)
    v5e-N, v6e-N    N chips, one JAX device each
    h100xN, h200xN, a100xN   N GPUs (one host; NVLink)
    cpu:N           N host CPU devices (no published peak: step time needs --peak-tflops)

Per device: HBM capacity (bytes, as published: 1 GB = 1e9), dense bfloat16 peak (FLOP/s)
and interconnect bandwidth (bytes/s per device, one direction: TPU ICI, GPU NVLink). From
Google Cloud's TPU system-architecture pages and NVIDIA's H100 / H200 / A100 SXM data sheets.

TPU targets compile against the real TPU compiler through `jax.experimental.topologies`
when libtpu is installed (`pip install -e '.[tpu-plan]'`; no TPU needed). Otherwise, and
for GPU targets (XLA has no compile-only GPU client here), the program is compiled for N
host CPU devices as a stand-in: the same SPMD partitioning and shapes, but XLA:CPU's
buffer assignment and fusion, so its temporaries are an estimate of the accelerator's.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re

from jaxbig.config import ConfigError

GB = 1e9


@dataclasses.dataclass(frozen=True)
class Chip:
    kind: str  # what the device is, in words
    hbm_bytes: float
    peak_flops: float  # dense bfloat16
    link_bytes_per_s: float


CHIPS = {
    'v4': Chip('TPU v4', 32 * GB, 275e12, 300 * GB),
    'v5p': Chip('TPU v5p', 95 * GB, 459e12, 600 * GB),
    'v5e': Chip('TPU v5e', 16 * GB, 197e12, 200 * GB),
    'v6e': Chip('TPU v6e', 32 * GB, 918e12, 448 * GB),
    'a100': Chip('NVIDIA A100 80GB SXM', 80 * GB, 312e12, 300 * GB),
    'h100': Chip('NVIDIA H100 SXM', 80 * GB, 989e12, 450 * GB),
    'h200': Chip('NVIDIA H200 SXM', 141 * GB, 989e12, 450 * GB),
}
MEGACORE = ('v4', 'v5p')  # names count TensorCores, two per chip
# TPU slice shapes (chips) by chip count, as the TPU topology names them.
TORUS_3D = {4: '2x2x1', 8: '2x2x2', 16: '2x2x4', 32: '2x4x4', 64: '4x4x4', 128: '4x4x8',
            256: '4x8x8', 512: '8x8x8', 1024: '8x8x16', 2048: '8x16x16', 4096: '16x16x16'}
TORUS_2D = {1: '1x1', 4: '2x2', 8: '2x4', 16: '4x4', 32: '4x8', 64: '8x8', 128: '8x16',
            256: '16x16'}
EXAMPLES = 'v5p-256, v5e-256, v6e-64, v4-128, h100x8, h200x8, a100x8, cpu:8'


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    platform: str  # 'tpu' | 'gpu' | 'cpu'
    num_devices: int
    chip: Chip | None  # None for cpu:N
    topology: str = ''  # TPU: e.g. 'v5p:4x4x8'

    @property
    def hbm_bytes(self) -> float | None:
        return self.chip.hbm_bytes if self.chip else None


def parse(name: str) -> Target:
    """'v5p-256' | 'v5e-256' | 'v6e-64' | 'v4-8' | 'h100x8' | 'cpu:8' -> Target (one-line
    ConfigError naming the accepted forms otherwise)."""
    m = re.fullmatch(r'cpu:(\d+)', name)
    if m:
        return Target(name, 'cpu', _positive(name, m.group(1)), None)
    m = re.fullmatch(r'(a100|h100|h200)x(\d+)', name)
    if m:
        return Target(name, 'gpu', _positive(name, m.group(2)), CHIPS[m.group(1)])
    m = re.fullmatch(r'(v4|v5p|v5e|v6e)-(\d+)', name)
    if m:
        gen, n = m.group(1), _positive(name, m.group(2))
        chips = n // 2 if gen in MEGACORE else n
        shapes = TORUS_3D if gen in MEGACORE else TORUS_2D
        if gen in MEGACORE and n % 2 or chips not in shapes:
            sizes = sorted(2 * c for c in shapes) if gen in MEGACORE else sorted(shapes)
            raise ConfigError(f'--target {name}: {gen} slices come in sizes {sizes}')
        return Target(name, 'tpu', chips, CHIPS[gen], topology=f'{gen}:{shapes[chips]}')
    raise ConfigError(f'--target {name!r}: expected one of {EXAMPLES} (see jaxbig plan --help)')


def _positive(name: str, digits: str) -> int:
    n = int(digits)
    if n < 1:
        raise ConfigError(f'--target {name}: needs at least one device')
    return n


def tpu_devices(target: Target):
    """The compile-only devices of a TPU slice (libtpu's compiler; no TPU needed), or None
    when libtpu is not installed."""
    try:
        import libtpu  # noqa: F401
    except ImportError:
        return None
    from jax.experimental import topologies

    os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')  # no metadata server: not on a TPU VM
    # compile-only: no chip is opened, so a second planning process (a sweep of plans, the
    # tests' workers) need not wait for libtpu's one-process lockfile
    os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
    gen = target.topology.split(':')[0]
    topo = topologies.get_topology_desc(
        topology_name=target.topology, platform='tpu',
        chip_config_name='megacore' if gen in MEGACORE else 'default',
        chips_per_host_bounds=(2, 2, 1), num_slices=1,
    )
    return list(topo.devices)


def cpu_devices(n: int):
    """n host CPU devices: asks JAX for them when its CPU backend has not started yet, and
    otherwise uses the first n of those it has (one-line error if fewer)."""
    import jax

    try:
        jax.config.update('jax_num_cpu_devices', n)
    except RuntimeError:  # backend already initialised: use what it has
        pass
    devices = jax.devices('cpu')
    if len(devices) < n:
        raise ConfigError(
            f'jaxbig plan needs {n} host CPU devices but this process has {len(devices)}; '
            f'run it as a fresh process (or set XLA_FLAGS=--xla_force_host_platform_device_count={n})'
        )
    return devices[:n]


def devices_for(target: Target):
    """(devices, compiled_for) for `target`: TPU compile-only devices when libtpu is
    installed, else N host CPU devices standing in (compiled_for says which)."""
    if target.platform == 'tpu':
        devices = tpu_devices(target)
        if devices is not None:
            return devices, f'{devices[0].device_kind} (libtpu, compile-only)'
        logging.warning('libtpu is not installed: compiling %s on %d host CPU devices as a '
                        "stand-in (pip install -e '.[tpu-plan]' for the TPU compiler)",
                        target.name, target.num_devices)
    return cpu_devices(target.num_devices), f'{target.num_devices} host CPU devices' + (
        f' standing in for {target.name}' if target.platform != 'cpu' else '')
