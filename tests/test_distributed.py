"""Joining a multi-process runtime (jaxbig.parallel.maybe_initialize_distributed): what a
process changes once it is one of several. The two-process runs themselves are
tests/test_multihost.py (slow)."""
import jax
import pytest

from jaxbig import parallel


@pytest.fixture
def cache_enabled():
    before = jax.config.jax_enable_compilation_cache
    jax.config.update('jax_enable_compilation_cache', True)
    yield
    jax.config.update('jax_enable_compilation_cache', before)


def test_multi_process_cpu_runs_compile_afresh_on_jaxlib_0_11_and_later(cache_enabled):
    """jaxlib >= 0.11's CPU client deadlocks running a cached program with cross-process
    collectives (two processes, the second run of the same step: both wait in an all-reduce
    forever), so such runs turn the persistent cache off; jaxlib 0.10 keeps it."""
    parallel._no_compilation_cache_across_cpu_processes()
    newer = tuple(int(p) for p in jax.lib.__version__.split('.')[:2]) >= (0, 11)
    assert jax.config.jax_enable_compilation_cache is (not newer)
