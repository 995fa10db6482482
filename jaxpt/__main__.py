"""`python -m jaxpt` is the `jaxpt` command."""

import sys

from jaxpt.cli import main

if __name__ == "__main__":  # not in a multiprocessing child that re-imports this module
  sys.exit(main())
