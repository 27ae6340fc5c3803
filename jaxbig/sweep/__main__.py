"""`python -m jaxbig.sweep ARGS` = `jaxbig sweep ARGS`."""

import sys

from jaxbig.sweep.cli import main

sys.exit(main())
