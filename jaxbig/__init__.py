"""jaxbig: one experiment config -> one compiled, sharded train step."""

__version__ = '0.1.0'
