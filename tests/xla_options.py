"""The XLA:CPU compile options of the test suite, in one place (no side effects: conftest
and the invariance matrix's device subprocess both import it).

FAST: LLVM's optimisations off and XLA:CPU's elemental fusion emitters — the tests' models
are tiny, so compiling is nearly all their cost, and this cuts it to about a quarter
(numerics stay IEEE; nothing here times or tunes the compiled code). DEFAULT: XLA:CPU's own
pipeline, for a jit whose bits must be what a run (not the suite) gets.

XLA in jaxlib 0.12 has the fusion emitters only (its flag is gone, and an unknown flag aborts
the process), so the flag is set for older jaxlibs alone.
"""
from importlib import metadata

FAST = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}
DEFAULT = {'xla_backend_optimization_level': 3, 'xla_llvm_disable_expensive_passes': False}
if tuple(int(p) for p in metadata.version('jaxlib').split('.')[:2]) < (0, 12):
    FAST['xla_cpu_use_fusion_emitters'] = False
    DEFAULT['xla_cpu_use_fusion_emitters'] = True


def as_flags(options: dict) -> str:
    """The options as an XLA_FLAGS string ('--name=value ...')."""
    return ' '.join(f'--{k}={str(v).lower()}' for k, v in options.items())
