"""The ground floor: the error every layer raises for a problem the user can fix.

Imports nothing from jaxbig, so any module may import it (`jaxbig.config` re-exports it).
"""


class ConfigError(ValueError):
    """A config problem a user can fix; the CLI prints it as one line."""
