"""Which way the imports go (docs/architecture.md, "The layers"), read from the source with
``ast``: every import counts, the ones inside functions too."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 'bisenet_jax'
# The descriptions every command shares sit above every part but the error type.
SPECS_MAY_IMPORT = {'bisenet_jax.errors'}


def module_name(path: Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
  """The package's modules that ``path`` imports (``from a import b`` counts ``a.b`` when that
  is a module, else ``a``)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      found.update(f'{node.module}.{alias.name}' if f'{node.module}.{alias.name}' in modules
                   else node.module for alias in node.names)
  return {name for name in found if name in modules}


@pytest.fixture(scope='module')
def graph() -> dict[str, set[str]]:
  paths = {module_name(path): path for path in PACKAGE.rglob('*.py')}
  return {name: imported_modules(path, set(paths)) for name, path in paths.items()}


def _package(module: str) -> str:
  """A module's unit in the picture: the subpackage it sits in, or the top-level module; a
  command (``__main__``) is an entry point of its own, above everything."""
  return module if module.endswith('__main__') else '.'.join(module.split('.')[:2])


def test_no_two_parts_of_the_package_import_each_other(graph):
  edges = {(_package(a), _package(b)) for a, targets in graph.items() for b in targets
           if _package(a) != _package(b)}
  # A package that imports its own parent package (``bisenet_jax``) only reaches leaf modules.
  edges = {(a, b) for a, b in edges if b != 'bisenet_jax' and a != 'bisenet_jax'}
  circles = sorted((a, b) for a, b in edges if (b, a) in edges and a < b)
  assert not circles, circles


def test_specs_import_no_other_part(graph):
  outside = {(module, target) for module, targets in graph.items()
             if module.startswith('bisenet_jax.specs') for target in targets
             if not target.startswith('bisenet_jax.specs') and target not in SPECS_MAY_IMPORT}
  assert not outside, sorted(outside)
