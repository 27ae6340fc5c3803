"""Process defaults jaxbig sets, each kept because benchmarks/RESULTS.md shows it pays (or
costs nothing) on the train steps jaxbig runs.

XLA flags, added to $XLA_FLAGS when jaxbig is imported:

    xla_cpu_experimental_ynn_fusion_type=''   CPU only: matmuls and elementwise work go to
        XLA's own emitters and Eigen instead of YNNPACK fusions. The default `tiny` LM
        step ran 5-12 % faster with 4 KB pages; with the allocator setting below, 1-2 %
        (within noise) at both `tiny` and GPT-2-small width.

The allocator, set by the entry points (`jaxbig ...`, `python -m jaxbig`, the benchmarks),
which start themselves again once with it, because glibc reads it only at process start:

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1   Linux/glibc >= 2.35 with transparent huge pages
        in 'madvise' or 'always' mode. XLA CPU allocates one buffer for all of a program's
        temporaries on every call (256 MB for the `tiny` LM step) and frees it after, so
        glibc maps it afresh each step: 65,000 page faults per step and about 120 ms of
        kernel time. Backed by 2 MB pages it costs a few thousand faults and fewer TLB
        misses: the tiny step ran 1.2x faster.

Overridable: a flag already named in $XLA_FLAGS, or a glibc.malloc.hugetlb entry already in
$GLIBC_TUNABLES, is left as the user set it, and JAXBIG_XLA_DEFAULTS=0 turns every default
off. XLA reads its flags when the JAX backend starts, so they apply when jaxbig is imported
before the first JAX computation (the CLI and benchmarks do this); a warning says so when
the backend had already started.

Old path: `jaxbig.xla_defaults` (jaxbig/xla_defaults.py) is this same module.
"""
from __future__ import annotations

import logging
import os
import platform
import re
import sys

DEFAULT_FLAGS = {'xla_cpu_experimental_ynn_fusion_type': ''}
OFF_SWITCH = 'JAXBIG_XLA_DEFAULTS'
MALLOC_TUNABLE = 'glibc.malloc.hugetlb=1'
THP_MODE_FILE = '/sys/kernel/mm/transparent_hugepage/enabled'


def flags_to_add(xla_flags: str, defaults: dict = DEFAULT_FLAGS) -> list[str]:
    """The '--name=value' defaults whose name does not appear in `xla_flags`."""
    named = {f.lstrip('-').split('=', 1)[0] for f in xla_flags.split()}
    return [f'--{name}={value}' for name, value in defaults.items() if name not in named]


def apply(environ=os.environ) -> list[str]:
    """Appends the missing defaults to environ['XLA_FLAGS']; returns what it added."""
    if environ.get(OFF_SWITCH, '1') == '0':
        return []
    added = flags_to_add(environ.get('XLA_FLAGS', ''))
    if added:
        environ['XLA_FLAGS'] = ' '.join([environ.get('XLA_FLAGS', ''), *added]).strip()
        if _backend_started():
            logging.warning('jaxbig: the JAX backend started before jaxbig was imported, so '
                            'its XLA defaults %s do not apply to this process', added)
    return added


def _backend_started() -> bool:
    if 'jax' not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge
        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):
        return False


def malloc_tunables(environ=os.environ, libc: tuple[str, str] | None = None,
                    thp_mode: str | None = None) -> str | None:
    """The $GLIBC_TUNABLES a jaxbig process should run with, or None to leave it unchanged
    (off switch, not glibc >= 2.35, huge pages unavailable, or the user chose a setting)."""
    if environ.get(OFF_SWITCH, '1') == '0':
        return None
    name, version = libc or platform.libc_ver()
    if name != 'glibc' or tuple(int(p) for p in re.findall(r'\d+', version)[:2]) < (2, 35):
        return None
    current = environ.get('GLIBC_TUNABLES', '')
    if 'glibc.malloc.hugetlb' in current:
        return None
    if (thp_mode if thp_mode is not None else _thp_mode()) not in ('always', 'madvise'):
        return None
    return ':'.join(t for t in (current, MALLOC_TUNABLE) if t)


def _thp_mode() -> str:
    """The kernel's transparent huge page mode ('always', 'madvise', 'never'), '' if unknown."""
    try:
        with open(THP_MODE_FILE) as f:
            found = re.search(r'\[(\w+)\]', f.read())
    except OSError:
        return ''
    return found.group(1) if found else ''


def restart_with_malloc_defaults(environ=os.environ, execv=os.execv) -> None:
    """Replaces this process by the same command line with `malloc_tunables()` set, when
    that changes anything; call it first thing in an entry point. Returns when nothing is
    to change or the restart is impossible (then the process goes on as it is)."""
    value = malloc_tunables(environ)
    argv = getattr(sys, 'orig_argv', None)
    if value is None or not argv:
        return
    original = environ.get('GLIBC_TUNABLES')
    environ['GLIBC_TUNABLES'] = value
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        execv(sys.executable, argv)
    except OSError as e:
        logging.warning('jaxbig: could not restart with GLIBC_TUNABLES=%s (%s)', value, e)
        if original is None:
            del environ['GLIBC_TUNABLES']
        else:
            environ['GLIBC_TUNABLES'] = original
