"""The scripts' commands and entry point: a script is its recipe, its commands made from it,
and ``cli.main({'train': train, ...})``::

    train, sample, evaluation = cli.script_commands(CIFAR10, 'train', 'sample', 'evaluation')

`script_commands` gives each command of a `recipes.Recipe` a real signature (the recipe's flags
in their order, its values as defaults), which Fire parses and ``--help`` shows, and a body
that hands every flag by name to the command in `runners.COMMANDS`. Called from Python
(``run_digits.train(max_steps=2000)``) it is the same function.

Every command's flags are checked (`validation`) before the command runs, so a bad value
never leaves a directory or file behind. Errors the user causes (`USER_ERRORS`) are printed
as one ``error: ...`` message on stderr with exit status 2, without a traceback; ``--debug``
(anywhere on the command line) or ``DIFFUSION_TF_DEBUG=1`` shows it. Every other exception is
a bug of ours and keeps its traceback. A flag the command does not take is refused before
it runs; Fire's other usage errors exit 2 as before.
"""

import functools
import inspect
import os
import sys

import fire
import tensorflow as tf

from . import validation
from .errors import FlagError, UserError

# FileNotFoundError covers DatasetNotFoundError and InceptionGraphNotFound; FileExistsError
# the outputs a command refuses to overwrite; the permission errors an unwritable directory.
USER_ERRORS = (UserError, FileNotFoundError, FileExistsError, PermissionError,
               tf.errors.PermissionDeniedError)
DEBUG_FLAG = '--debug'
DEBUG_ENV = 'DIFFUSION_TF_DEBUG'
USER_ERROR_STATUS = 2


def _command(recipe, name):
  positional, keyword = recipe.flags(name)
  P = inspect.Parameter
  params = [P(n, P.POSITIONAL_OR_KEYWORD, default=recipe.default(name, n)) for n in positional]
  params += [P(n, P.KEYWORD_ONLY, default=recipe.default(name, n)) for n in keyword]
  signature = inspect.Signature(params)

  def command(*args, **kwargs):
    from . import runners  # the command bodies (TensorFlow-heavy) load when a command runs
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    runners.COMMANDS[name](recipe, dict(bound.arguments))

  command.__name__ = command.__qualname__ = name
  command.__doc__ = recipe.docs.get(name)
  command.__signature__ = signature
  command._recipe = recipe  # for the flag rules that depend on it (v1 / v2 loss types)
  return command


def script_commands(recipe, *names):
  """The commands ``names`` of ``recipe`` as functions (one per name, in that order)."""
  return tuple(_command(recipe, name) for name in names)


def validated(fn):
  """``fn`` checking its flags first; the signature and help text stay ``fn``'s (Fire follows
  ``__wrapped__``)."""
  @functools.wraps(fn)
  def command(*args, **kwargs):
    validation.check_call(fn, args, kwargs)
    return fn(*args, **kwargs)
  return command


def check_flag_names(commands, argv):
  """Raises FlagError for a ``--flag`` the named command does not take. (Fire would call the
  command with the flags it knows and complain about the rest only after it returned, e.g.
  after a whole training run with a misspelt --max_steps.)"""
  if not argv or argv[0] not in commands:
    return  # no command named: Fire lists them
  params = inspect.signature(commands[argv[0]]).parameters
  for token in argv[1:]:
    if token == '--':
      break  # Fire's own flags follow
    if not token.startswith('--') or len(token) == 2:
      continue
    name = token[2:].split('=', 1)[0].replace('-', '_')
    if name == 'help' or name in params or (name.startswith('no') and name[2:] in params):
      continue
    raise FlagError(f'{argv[0]} has no flag --{name}; its flags: '
                    + ', '.join(f'--{p}' for p in params))


def _message(e):
  if isinstance(e, tf.errors.OpError):
    return e.message
  return str(e) or type(e).__name__


def main(commands, argv=None):
  """Runs the command named on the command line (``argv``: default ``sys.argv[1:]``)."""
  def run(argv):
    check_flag_names(commands, argv)
    fire.Fire({name: validated(fn) for name, fn in commands.items()}, command=argv)

  report_user_errors(run, list(sys.argv[1:] if argv is None else argv))


def report_user_errors(run, argv):
  """``run(argv)`` (without ``--debug``), a user error printed as one ``error:`` line, exit 2."""
  debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, '') not in ('', '0')
  argv = [a for a in argv if a != DEBUG_FLAG]
  try:
    run(argv)
  except USER_ERRORS as e:
    if debug:
      raise
    sys.stdout.flush()
    print(f'error: {_message(e)}', file=sys.stderr, flush=True)
    sys.exit(USER_ERROR_STATUS)
