"""The old path of jaxbig.runtime.xla_defaults, kept because README told users to call
`jaxbig.xla_defaults.restart_with_malloc_defaults()` in their own scripts: importing it gives
the same module object (so patching either name patches both)."""
import sys

from jaxbig.runtime import xla_defaults

sys.modules[__name__] = xla_defaults
