"""`python -m jaxbig ...` and the `jaxbig` console script (see jaxbig/cli.py)."""
import sys

from jaxbig.runtime import xla_defaults


def entry():
    # Before anything else: may start this command again with jaxbig's allocator setting.
    xla_defaults.restart_with_malloc_defaults()
    from jaxbig.cli import main

    sys.exit(main())


if __name__ == '__main__':
    entry()
