"""The package's layering (shared/DESIGN.md), read from the source with `ast`: arrows point down
only, there is no import cycle, and no function outgrows a screen."""

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "mdpo_jax"
ENTRY_POINTS = {"mdpo_jax.train", "mdpo_jax.evaluate", "mdpo_jax.generate", "mdpo_jax.reproduce",
                "mdpo_jax.plan"}


def _modules() -> dict[str, Path]:
  out = {}
  for path in PACKAGE.rglob("*.py"):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    out[name] = path
  return out


MODULES = _modules()


def _imports(name: str) -> set[str]:
  """Package modules that `name` imports anywhere (module level or inside functions)."""
  tree = ast.parse(MODULES[name].read_text())
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      subs = {f"{node.module}.{a.name}" for a in node.names} & set(MODULES)
      found.update(subs)
      if len(subs) < len(node.names):   # names from the module itself, not only its submodules
        found.add(node.module)
  return {m for m in found if m in MODULES and m != name and m != "mdpo_jax"}


GRAPH = {name: _imports(name) for name in MODULES}


def test_the_graph_is_read():   # guards the tests below against an empty or broken parse
  assert "mdpo_jax.training.rl_loop" in GRAPH
  assert {"mdpo_jax.rl.algorithms", "mdpo_jax.training.run"} <= GRAPH["mdpo_jax.training.rl_loop"]


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m.startswith("mdpo_jax.rl")))
def test_rl_never_imports_training_or_an_entry_point(name):
  bad = {m for m in GRAPH[name] if m.startswith("mdpo_jax.training") or m in ENTRY_POINTS
         or m == "mdpo_jax.config"}
  assert not bad, f"{name} imports {sorted(bad)}"


@pytest.mark.parametrize("lower,upper", [
    ("mdpo_jax.models", "mdpo_jax.sampling"), ("mdpo_jax.models", "mdpo_jax.rl"),
    ("mdpo_jax.sampling", "mdpo_jax.rl"), ("mdpo_jax.sampling", "mdpo_jax.tasks"),
    ("mdpo_jax.tasks", "mdpo_jax.training"), ("mdpo_jax.models", "mdpo_jax.training")])
def test_lower_rooms_do_not_import_upper_ones(lower, upper):
  for name in MODULES:
    if name.startswith(lower):
      assert not any(m.startswith(upper) for m in GRAPH[name]), (name, GRAPH[name])


def test_parallel_knows_no_model_family():
  assert not GRAPH["mdpo_jax.parallel"], GRAPH["mdpo_jax.parallel"]


def test_no_import_cycle():
  state: dict[str, int] = {}   # 1 = on the current path, 2 = done

  def visit(name, path):
    state[name] = 1
    for dep in GRAPH[name]:
      if state.get(dep) == 1:
        raise AssertionError("import cycle: " + " → ".join(path + [name, dep]))
      if dep not in state:
        visit(dep, path + [name])
    state[name] = 2
  for name in sorted(GRAPH):
    if name not in state:
      visit(name, [])


def test_no_function_longer_than_80_lines():
  """Lines from the signature to the end, docstring included."""
  long = []
  for name, path in MODULES.items():
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        n = node.end_lineno - node.lineno + 1
        if n > 80:
          long.append(f"{name}.{node.name}: {n} lines")
  assert not long, long



def _imported_by_tests() -> set[str]:
  """Package modules that some test file imports in-process (module level or in a function)."""
  found = set()
  for path in Path(__file__).parent.glob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        found.update(a.name for a in node.names)
      elif isinstance(node, ast.ImportFrom) and node.module:
        found.add(node.module)
        found.update(f"{node.module}.{a.name}" for a in node.names)
  return found & set(MODULES)


def test_the_modules_tests_import_coexist_in_one_process():
  """Command modules define absl flags at import, and two defining one name cannot both be
  imported in one process. A test worker may import any of the modules the tests import, so
  they are all imported here at once: a clash fails deterministically, not only when xdist
  happens to put two such tests on one worker. (A command module that tests import defines its
  flags when run as a command, e.g. `cogrpo_compare.define_flags`.)"""
  names = _imported_by_tests()
  assert "mdpo_jax.cogrpo_compare" in names and "mdpo_jax.generate" in names
  for name in sorted(names):
    importlib.import_module(name)
