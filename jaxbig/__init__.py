"""jaxbig: one experiment config -> one compiled, sharded train step."""

from jaxbig.runtime import xla_defaults as _xla_defaults

_xla_defaults.apply()  # before any JAX computation; see jaxbig/runtime/xla_defaults.py

__version__ = '0.1.0'
