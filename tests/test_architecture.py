"""The package's shape, checked from its source (nothing is imported or run): no import circle
between modules, no function over 80 lines, no function handed ``locals()``, sampler names
compared in the sampler registry only. Each check is a small AST walk; each has a test showing
that it finds what it looks for."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / 'diffusion_tf'
MAX_FUNCTION_LINES = 80
SAMPLER_NAMES = ('ddpm', 'ddim', 'pndm', 'dpmsolver++', 'unipc')
SAMPLER_REGISTRY = {'sampling.py'}


def modules():
  """{dotted module name: path} of every module of the package."""
  out = {}
  for path in sorted(PACKAGE.rglob('*.py')):
    parts = path.relative_to(ROOT).with_suffix('').parts
    out['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = path
  return out


def imports_of(name, path, known):
  """The package modules ``name`` imports (at any depth of its code: a deferred import is still
  an edge), resolved the way Python resolves them."""
  tree = ast.parse(path.read_text())
  package = name if path.name == '__init__.py' else name.rpartition('.')[0]
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        anchor = package.split('.')
        anchor = anchor[:len(anchor) - node.level + 1]
        base = '.'.join(anchor + ([base] if base else []))
      # A name that is a module is that module; any other name comes from ``base`` itself.
      targets = [f'{base}.{a.name}' if f'{base}.{a.name}' in known else base for a in node.names]
    else:
      continue
    for target in targets:
      while target and target not in known:
        target = target.rpartition('.')[0]
      if target and target != name:
        found.add(target)
  return found


def import_graph():
  known = modules()
  return {name: imports_of(name, path, known) for name, path in known.items()}


def cycles(graph, shims=()):
  """Strongly connected groups of more than one module (Tarjan), ``shims`` left out."""
  index, low, stack, on, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in graph[v]:
      if w in shims:
        continue
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      group = []
      while True:
        w = stack.pop()
        on.discard(w)
        group.append(w)
        if w == v:
          break
      if len(group) > 1:
        out.append(sorted(group))

  for v in graph:
    if v not in index and v not in shims:
      visit(v)
  return out


def shim_modules():
  """Modules kept only so that an old import path still works (they alias the moved module)."""
  return {name for name, path in modules().items() if 'sys.modules[__name__] =' in path.read_text()}


def long_functions(source, limit=MAX_FUNCTION_LINES):
  tree = ast.parse(source)
  return [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(tree)
          if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
          and n.end_lineno - n.lineno + 1 > limit]


def sampler_comparisons(source):
  """Lines comparing something with a sampler name (``==``, ``!=``, ``in``, ``not in``)."""
  tree = ast.parse(source)
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Compare):
      for part in [node.left, *node.comparators]:
        values = [part] + (list(part.elts) if isinstance(part, (ast.Tuple, ast.List, ast.Set)) else [])
        if any(isinstance(v, ast.Constant) and v.value in SAMPLER_NAMES for v in values):
          found.append(node.lineno)
  return found


# ----------------------------------------------------------------------------- the checks

def test_no_import_circle():
  graph = import_graph()
  assert 'diffusion_tf.runners' in graph['diffusion_tf.cli']  # the walk sees deferred imports
  assert cycles(graph, shim_modules()) == []


def test_loading_sits_below_runners_and_pipelines():
  graph = import_graph()
  for upper in ('diffusion_tf.runners', 'diffusion_tf.pipelines'):
    assert 'diffusion_tf.loading' in graph[upper]
    assert upper not in graph['diffusion_tf.loading']
  assert 'diffusion_tf.runners' not in graph['diffusion_tf.pipelines']


def test_no_function_is_longer_than_80_lines():
  long = {str(p.relative_to(ROOT)): long_functions(p.read_text()) for p in modules().values()}
  assert {p: fns for p, fns in long.items() if fns} == {}


def test_no_function_is_handed_its_locals():
  offenders = [str(p.relative_to(ROOT)) for d in ('diffusion_tf', 'scripts')
               for p in (ROOT / d).rglob('*.py') if re.search(r'\blocals\(\)', p.read_text())]
  assert offenders == []


def test_sampler_names_are_compared_in_the_registry_only():
  found = {str(p.relative_to(ROOT)): sampler_comparisons(p.read_text())
           for p in modules().values() if p.name not in SAMPLER_REGISTRY}
  assert {p: lines for p, lines in found.items() if lines} == {}


# ----------------------------------------------------------------------------- the checks check

def test_the_checks_find_what_they_look_for():
  graph = {'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}
  assert cycles(graph) == [['a', 'b', 'c']]
  assert cycles(graph, shims={'c'}) == []
  body = '\n'.join(f'  x{i} = {i}' for i in range(80))
  assert long_functions(f'def f():\n{body}\n') == [('f', 81)]
  assert long_functions(f'def f():\n{body[:-9]}\n') == []
  assert sampler_comparisons("if s == 'ddim':\n  pass\nif s in ('pndm', 'x'):\n  pass\n") == [1, 3]
  assert sampler_comparisons("x = {'ddim': 1}\n") == []


@pytest.mark.parametrize('code,expected', [
    ('from . import sampling', {'diffusion_tf.sampling'}),
    ('from .tpu_utils import datasets', {'diffusion_tf.tpu_utils.datasets'}),
    ('def f():\n  from .metrics import inception', {'diffusion_tf.metrics.inception'}),
])
def test_imports_are_resolved_as_python_does(tmp_path, code, expected):
  path = tmp_path / 'runners.py'
  path.write_text(code)
  assert imports_of('diffusion_tf.runners', path, set(modules())) == expected


def test_the_architecture_page_names_every_module():
  page = (ROOT / 'docs' / 'architecture.md').read_text()
  shims = shim_modules()
  missing = [name for name in modules() if name not in shims and name != 'diffusion_tf'
             and f'`{name.split(".", 1)[1].replace(".", "/")}' not in page]
  assert missing == []
