"""Environment setup of a jaxbig process, apart from the library and the commands.

xla_defaults.py: the XLA flags jaxbig sets when imported (jaxbig/__init__.py applies them
before any JAX computation) and the allocator setting the entry points restart with
(jaxbig/__main__.py, the benchmarks). Importing this package imports nothing heavy (no JAX).
"""
