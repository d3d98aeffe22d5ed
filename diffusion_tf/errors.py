"""Errors a user causes (a bad flag, a missing or damaged file, a refused setting): the
scripts report them as one line and exit with status 2 (`cli.main`); every other exception
is ours and keeps its traceback."""


class UserError(Exception):
  """Caused by the user's input or files; the message says what was expected and what to do."""


class FlagError(UserError, ValueError):
  """A flag's value is out of its type, range or allowed set."""


class ModelFileError(UserError, ValueError):
  """A model's files (a diffusers folder or Hub snapshot, a run directory, a TF1 checkpoint, a
  ``.bin``) cannot be loaded: damaged, inconsistent, or asking for what we do not compute. The
  message names the file and, where it applies, the key and the value. Raised before the
  network is built."""


class DamagedCheckpointError(ModelFileError):
  """A checkpoint's files are incomplete or unreadable."""


class DamagedFileError(ModelFileError):
  """A file the user's run depends on (e.g. kwargs.json) cannot be read."""


class DatasetNotFoundError(UserError, FileNotFoundError):
  """The data for a data set is missing; the message says where we looked and how to get it."""


class DatasetContentError(UserError, ValueError):
  """A data set is there but does not hold what training needs (no such image column, images
  of different sizes without a resolution to bring them to)."""
