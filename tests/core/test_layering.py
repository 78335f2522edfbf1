"""DESIGN.md's layering, checked on the source: every import, including function-level ones."""

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parents[2] / "clipjax"
# ot/, methods/ and attacks/ are pure JAX + ott: testable on CPU in milliseconds.
PURE = ("ot", "methods", "attacks")
HEAVY = ("flax", "orbax", "grain", "tensorflow_datasets", "tensorflow", "torch")


def _imports(path: pathlib.Path) -> set[str]:
  """Dotted names a module imports (`from a.b import c` gives `a.b` and `a.b.c`)."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      out.add(node.module)
      out.update(f"{node.module}.{a.name}" for a in node.names)
  return out


def _modules():
  return sorted(PKG.rglob("*.py"))


def _rel(path):
  return path.relative_to(PKG.parent).as_posix()


def test_imports_are_found_inside_functions_too(tmp_path):
  src = tmp_path / "m.py"
  src.write_text("def f():\n  from clipjax.train import loop\n  import flax.nnx\n")
  assert {"clipjax.train.loop", "flax.nnx"} <= _imports(src)


@pytest.mark.parametrize("pkg", PURE)
def test_pure_layers_import_no_flax_orbax_grain_tfds(pkg):
  bad = {
    _rel(p): sorted(m for m in _imports(p) if m.split(".")[0] in HEAVY)
    for p in sorted((PKG / pkg).rglob("*.py"))
  }
  assert not {k: v for k, v in bad.items() if v}


def test_only_task_runners_import_the_training_loop():
  users = [_rel(p) for p in _modules() if "clipjax.train.loop" in _imports(p)]
  assert users and all(u.startswith("clipjax/tasks/") for u in users), users


def test_libraries_never_import_a_runner():
  allowed = ("clipjax/tasks/", "clipjax/main.py")
  users = [
    _rel(p)
    for p in _modules()
    if any(m == "clipjax.tasks" or m.startswith("clipjax.tasks.") for m in _imports(p))
  ]
  assert all(u.startswith(allowed) for u in users), users


def test_only_checkpointing_calls_orbax():
  users = [_rel(p) for p in _modules() if any(m.startswith("orbax") for m in _imports(p))]
  assert users == ["clipjax/checkpointing.py"]
