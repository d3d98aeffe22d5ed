"""The scripts' entry point: ``cli.main({'train': train, ...})``.

Every command's flags are checked (`validation`) before the command runs, so a bad value
never leaves a directory or file behind. Errors the user causes (`USER_ERRORS`) are printed
as one ``error: ...`` message on stderr with exit status 2, without a traceback; ``--debug``
(anywhere on the command line) or ``DIFFUSION_TF_DEBUG=1`` shows it. Every other exception is
a bug of ours and keeps its traceback. Fire's own usage errors exit 2 as before.
"""

import functools
import os
import sys

import fire
import tensorflow as tf

from . import validation
from .errors import UserError

# FileNotFoundError covers DatasetNotFoundError and InceptionGraphNotFound; FileExistsError
# the outputs a command refuses to overwrite; the permission errors an unwritable directory.
USER_ERRORS = (UserError, FileNotFoundError, FileExistsError, PermissionError,
               tf.errors.PermissionDeniedError)
DEBUG_FLAG = '--debug'
DEBUG_ENV = 'DIFFUSION_TF_DEBUG'
USER_ERROR_STATUS = 2


def validated(fn):
  """``fn`` checking its flags first; the signature and help text stay ``fn``'s (Fire follows
  ``__wrapped__``)."""
  @functools.wraps(fn)
  def command(*args, **kwargs):
    validation.check_call(fn, args, kwargs)
    return fn(*args, **kwargs)
  return command


def _message(e):
  if isinstance(e, tf.errors.OpError):
    return e.message
  return str(e) or type(e).__name__


def main(commands, argv=None):
  """Runs the command named on the command line (``argv``: default ``sys.argv[1:]``)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, '') not in ('', '0')
  argv = [a for a in argv if a != DEBUG_FLAG]
  try:
    fire.Fire({name: validated(fn) for name, fn in commands.items()}, command=argv)
  except USER_ERRORS as e:
    if debug:
      raise
    sys.stdout.flush()
    print(f'error: {_message(e)}', file=sys.stderr, flush=True)
    sys.exit(USER_ERROR_STATUS)
