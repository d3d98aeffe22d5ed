"""The docs cannot rot: every command in README.md and docs/*.md that runs one of our scripts
must be accepted by that script (fire parses the flags against the command's signature; nothing
runs), and every Python block marked ``<!-- runnable -->`` runs against a tiny configuration."""

import ast
import functools
import inspect
import re
import shlex
from pathlib import Path

import fire
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]
RUNNABLE_MARK = '<!-- runnable -->'


def fenced_blocks(path):
  """(language, first line number, text, preceded by the runnable mark) of each fenced block."""
  lines = path.read_text().splitlines()
  blocks, i = [], 0
  while i < len(lines):
    m = re.match(r'^\s*```(\w*)\s*$', lines[i])
    if not m:
      i += 1
      continue
    start, lang = i + 1, m.group(1)
    j = start
    while j < len(lines) and not re.match(r'^\s*```\s*$', lines[j]):
      j += 1
    previous = next((lines[k].strip() for k in range(i - 1, -1, -1) if lines[k].strip()), '')
    blocks.append((lang, start + 1, '\n'.join(lines[start:j]), previous == RUNNABLE_MARK))
    i = j + 1
  return blocks


def shell_commands(text):
  """The simple commands of a shell block: continuations joined, comments dropped, split at
  ``&&``, ``||``, ``;`` and ``|``."""
  joined = re.sub(r'\\\n\s*', ' ', text)
  for line in joined.splitlines():
    try:
      tokens = shlex.split(line, comments=True)
    except ValueError:
      continue
    command = []
    for tok in tokens + [';']:
      if tok in ('&&', '||', ';', '|'):
        if command:
          yield command
        command = []
      else:
        command.append(tok)


def script_invocations():
  """(doc file:line, script path, argv after the script) of every documented script call."""
  found = []
  for path in DOC_FILES:
    for lang, line, text, _ in fenced_blocks(path):
      if lang not in ('bash', 'sh', 'shell', 'console', ''):
        continue
      for command in shell_commands(text):
        for k, tok in enumerate(command):
          if re.fullmatch(r'(\./)?scripts/\w+\.py', tok):
            found.append((f'{path.name}:{line}', ROOT / tok.lstrip('./'), command[k + 1:]))
            break
  return found


@functools.lru_cache(maxsize=None)
def script_module(script):
  """The script imported (its ``__main__`` block does not run)."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(f'_doc_{script.stem}', script)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@functools.lru_cache(maxsize=None)
def script_commands(script):
  """{command name: function} as the script's ``__main__`` block hands them to fire (a dict
  literal of names), read from its source without running it."""
  module = script_module(script)
  tree = ast.parse(script.read_text())
  for node in ast.walk(tree):
    if isinstance(node, ast.Dict) and node.keys and all(
        isinstance(k, ast.Constant) and isinstance(v, ast.Name) for k, v in zip(node.keys, node.values)):
      return {k.value: getattr(module, v.id) for k, v in zip(node.keys, node.values)}
  for node in ast.walk(tree):  # fire.Fire(fn) / main(fn): a single command
    if isinstance(node, ast.Call) and len(node.args) == 1 and isinstance(node.args[0], ast.Name):
      fn = getattr(module, node.args[0].id, None)
      if callable(fn):
        return {None: fn}
  raise AssertionError(f'{script}: no command table found in its __main__ block')


def _as_fire_sees_it(argv):
  # $VARS in the docs stand for user values: give fire a placeholder string. The scripts'
  # entry point (`cli.main`) takes --debug itself.
  from diffusion_tf.cli import DEBUG_FLAG
  return [re.sub(r'\$\{?(\w+)\}?', lambda m: m.group(1).lower(), a) for a in argv if a != DEBUG_FLAG]


def check_accepted(script, argv):
  """Raises AssertionError unless fire would call one of the script's commands with argv (or,
  for an argparse script with a module-level ``parse``, unless ``parse`` accepts it)."""
  parse = getattr(script_module(script), 'parse', None)
  if parse is not None:
    from diffusion_tf.errors import FlagError
    try:
      parse(_as_fire_sees_it(argv))
    except FlagError as e:
      raise AssertionError(f'{script.name}: refused {argv}: {e}') from None
    return
  commands = script_commands(script)
  if None in commands:
    name, fn, rest = None, commands[None], argv
  else:
    assert argv and argv[0] in commands, (
        f'{script.name}: no command {argv[:1]}; it has {sorted(commands)}')
    name, fn, rest = argv[0], commands[argv[0]], argv[1:]
  calls = []

  def stub(*args, **kwargs):
    calls.append((args, kwargs))

  stub.__signature__ = inspect.signature(fn)
  try:
    fire.Fire(stub, command=_as_fire_sees_it(rest), name=f'{script.name} {name or ""}')
  except fire.core.FireExit as e:
    raise AssertionError(f'{script.name} {name}: fire refused {rest} (exit {e.code})') from None
  assert calls, f'{script.name} {name}: fire did not call the command with {rest}'


INVOCATIONS = script_invocations()


def test_docs_show_script_commands():
  # The README's quick start alone has one; a parser that finds nothing is broken.
  scripts = {s.name for _, s, _ in INVOCATIONS}
  assert {'run_digits.py', 'run_cifar.py', 'run_celebahq.py', 'run_lsun.py'} <= scripts, scripts


@pytest.mark.parametrize('where,script,argv', INVOCATIONS,
                         ids=[f'{w}:{s.name}:{" ".join(a[:1])}' for w, s, a in INVOCATIONS])
def test_documented_command_is_accepted(where, script, argv):
  assert script.exists(), f'{where}: {script} does not exist'
  check_accepted(script, argv)


def test_renamed_flag_is_caught():
  # The check itself must fail on a flag the command does not have.
  script = ROOT / 'scripts' / 'run_digits.py'
  check_accepted(script, ['train', '--max_steps', '3'])
  with pytest.raises(AssertionError, match='fire refused'):
    check_accepted(script, ['train', '--max_stepz', '3'])
  with pytest.raises(AssertionError, match='no command'):
    check_accepted(script, ['trian'])


# ----------------------------------------------------------------------------- runnable blocks

RUNNABLE = [(f'{path.name}:{line}', text) for path in DOC_FILES
            for lang, line, text, runnable in fenced_blocks(path) if runnable and lang == 'python']
TINY_DIFFUSERS_MODEL = ROOT / 'tests' / 'fixtures' / 'diffusers' / 'google'


def fake_hub_cache(hf_home, repo_ids):
  """An offline Hugging Face cache in which every repo of ``repo_ids`` is the tiny diffusers
  model of the test fixtures (the google repos' flat layout), laid out as huggingface_hub's
  ``snapshot_download`` leaves a download."""
  import shutil
  revision = '0' * 40
  for repo_id in repo_ids:
    repo = Path(hf_home) / 'hub' / ('models--' + repo_id.replace('/', '--'))
    shutil.copytree(TINY_DIFFUSERS_MODEL, repo / 'snapshots' / revision)
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text(revision)


def test_docs_have_runnable_blocks():
  assert any(where.startswith('README.md') for where, _ in RUNNABLE)


@pytest.mark.parametrize('where,code', RUNNABLE, ids=[w for w, _ in RUNNABLE])
def test_runnable_block_runs(where, code, tmp_path, monkeypatch):
  """The block runs as written, with the Hub ids it names served from an offline cache that
  holds a tiny model of the same format (the Hub cannot be reached from the tests)."""
  repo_ids = sorted(set(re.findall(r'from_pretrained\(\s*["\']([\w.-]+/[\w.-]+)["\']', code)))
  fake_hub_cache(tmp_path / 'hf', repo_ids)
  monkeypatch.setenv('HF_HOME', str(tmp_path / 'hf'))
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  monkeypatch.chdir(tmp_path)
  exec(compile(code, where, 'exec'), {'__name__': '__docs__'})  # noqa: S102  (our own docs)


def test_relative_links_point_to_files():
  broken = []
  for path in DOC_FILES:
    for target in re.findall(r'\]\(([^)\s]+)\)', path.read_text()):
      if re.match(r'[a-z]+://', target) or target.startswith('#'):
        continue
      if not (path.parent / target.split('#')[0]).exists():
        broken.append(f'{path.name}: {target}')
  assert not broken, broken
