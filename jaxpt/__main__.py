"""`python -m jaxpt` is the `jaxpt` command."""

import sys

from jaxpt.cli import main

sys.exit(main())
