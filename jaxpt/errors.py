"""One base class for every mistake a user can fix; the CLI catches it once.

Each module keeps its own subclass (ConfigError, InputError, TrainError, ...), so code can
catch the kind it expects; `jaxpt` prints any of them as one line and exits 2.
"""


class UserError(Exception):
  """A problem the user can fix: a path, a field, a value; the message names it."""
