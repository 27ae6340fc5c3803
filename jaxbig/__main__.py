import sys

from jaxbig.cli import main

sys.exit(main())
