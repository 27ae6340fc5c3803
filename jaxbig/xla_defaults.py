"""XLA flags jaxbig sets when it is imported, each kept because benchmarks/RESULTS.md shows it
pays (or costs nothing) on the train steps jaxbig runs.

    xla_cpu_experimental_ynn_fusion_type=''   CPU only: matmuls and elementwise work go to
        XLA's own emitters and Eigen instead of YNNPACK fusions. The default `tiny` LM
        step ran 5-10 % faster; at GPT-2-small width within 1 % either way.

Overridable: a flag already named in $XLA_FLAGS is left as the user set it, and
JAXBIG_XLA_DEFAULTS=0 turns every default off. XLA reads its flags when the JAX backend
starts, so they apply when jaxbig is imported before the first JAX computation (the CLI
and benchmarks do this); a warning says so when the backend had already started.
"""
from __future__ import annotations

import logging
import os
import sys

DEFAULT_FLAGS = {'xla_cpu_experimental_ynn_fusion_type': ''}
OFF_SWITCH = 'JAXBIG_XLA_DEFAULTS'


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
