"""Every command block in README.md and docs/ runs in its :smoke form, or is skipped with a reason.

Each fenced block is split into commands (continuation lines joined, `&&` split, comments
dropped) and every command gets a plan:

* `python -m clipjax.main --config configs/X.py[:arg] ...`: parsed exactly as the CLI parses it
  (same `config_flags` definition, locked config, the command's own `--config.*` overrides) with
  `smoke` added to the config argument (`test_doc_command_is_planned_and_parses`). The first
  such command of each config file then runs in-process, in its smoke form, into a temporary
  workdir (`test_doc_commands_run_in_smoke_form`, in document order: README first). Input
  workdirs a command names (a checkpoint, an init) become the temporary workdir of the command
  that wrote that path, else the quickstart smoke run's. Launcher-wrapped commands (srun,
  mpirun) are parsed but not run.
* Python blocks: run with the substitutions in `PYTHON_SMOKE`, or skipped with a reason.
* Anything else matches one rule of `SKIPS` (a reason each) or the test fails: a new kind of
  command in the docs needs a decision here.
"""

from __future__ import annotations

import ast
import dataclasses
import pathlib
import re
import shlex

import pytest
from absl import flags
from ml_collections import config_flags

from clipjax import tasks

# ml_collections' config_flags loads config files with importlib's deprecated load_module.
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")

REPO = pathlib.Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
CONFIGS = sorted((REPO / "configs").glob("*.py"))
FIXTURES = REPO / "tests" / "fixtures" / "parity"

# (regex on the command, reason): commands that are not run, and why.
SKIPS = [
  (r"--config configs/my_config\.py", "placeholder config name in the multi-node guide"),
  (r"^pip install", "installs packages (CI installs the project itself)"),
  (r"^ruff |python -m pytest", "lint and the test suite: CI runs them (.ci/run)"),
  (r"^(srun|mpirun|#SBATCH|#!/bin/bash|source |export )", "cluster launcher or environment"),
  (r"^python -c \"import jax; print\(jax\.devices\(\)\)\"", "lists the GPUs of a GPU host"),
  (r"\$[A-Z]", "shell loop variables ($A, $T, $loss ...) of a driver script's inner command"),
  (r"^(\w+=\S* )*(nice -n \d+ )?scripts/\w+\.sh", "shell driver of many training runs"),
  (
    r"^(nice -n \d+ )?python scripts/[\w/]+\.py",
    "benchmark or reproduction driver (minutes to hours of runs); the script must exist, and its "
    "configs run in :smoke form here and in tests/core/test_configs.py",
  ),
  (r"^\w+=\S*$", "shell variable assignment used by the next command"),
  (
    r"configs/hotclip_fuse\.py:root=",
    "needs the grid of submodel workdirs that `scripts/reproduce.py hotclip` trains (the fuse "
    "task's smoke run is in tests/methods/test_hotclip.py)",
  ),
]

# Scripts that result pages still name in the commands they recorded, although the scripts were
# replaced by scripts/reproduce.py (+ scripts/repro/); listed so that no other rot passes.
RETIRED_SCRIPTS = {
  "scripts/ncu_repro.py": "replaced by `scripts/reproduce.py ncu`",
  "scripts/otcclip_repro.py": "replaced by `scripts/reproduce.py otcclip`",
  "scripts/otclip_repro.py": "replaced by `scripts/reproduce.py otclip`",
  "scripts/hotclip_control.py": "replaced by the control runs of `scripts/reproduce.py hotclip`",
}

# Python blocks: first line -> ("run", {old: new} substitutions) or ("skip", reason).
PYTHON_SMOKE = {
  "import jax, clipjax.model": (
    "run",
    {
      '"ViT-B-32.safetensors"': repr(str(FIXTURES / "openai.safetensors")),
      '"configs/base.py:seed=1"': repr(f"{REPO}/configs/base.py:seed=1"),
      "import jax, clipjax.model": (
        "import jax, clipjax.model\nimport numpy as np\n"
        "pixels_bhwc = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)"
      ),
      # The tiny stand-in model has 16 positions and a 1000-token vocabulary.
      'Tokenizer.default()(["a photo of a dog"])': (
        'Tokenizer.default()(["a photo of a dog"], context_length=16) % 1000'
      ),
    },
  ),
  "import numpy as np": (
    "skip",
    "redraws a committed figure from a trained workdir (/tmp/qs/full4)",
  ),
}


@dataclasses.dataclass
class Command:
  doc: str
  line: int
  text: str


def _blocks(path: pathlib.Path):
  """(language, first line number, body) of every fenced block."""
  text = path.read_text(encoding="utf-8")
  for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
    yield m.group(1), text[: m.start()].count("\n") + 2, m.group(2)


def _commands(path: pathlib.Path, lang: str, start: int, body: str) -> list[Command]:
  out, pending, first = [], "", 0
  for i, raw in enumerate(body.splitlines()):
    line = raw.strip()
    if not pending:
      first = start + i
    if line.startswith("#") and not line.startswith(("#SBATCH", "#!")):
      continue
    line = re.sub(r"\s+#\s.*$", "", line)  # trailing comment
    if line.endswith("\\"):
      pending += line[:-1] + " "
      continue
    text = (pending + line).strip()
    pending = ""
    if not text:
      continue
    if lang == "" and not re.match(r"(python|pip|nice|scripts/|\w+=)", text):
      continue  # an unlabeled block of prose or a file listing, not a command
    for part in text.split(" && "):
      out.append(Command(str(path.relative_to(REPO)), first, part.strip()))
  return out


def _all():
  cmds, pys = [], []
  for path in DOCS:
    for lang, start, body in _blocks(path):
      if lang == "python":
        pys.append(Command(str(path.relative_to(REPO)), start, body))
      elif lang in ("", "bash", "sh", "shell"):
        cmds.extend(_commands(path, lang, start, body))
  # The commands in each config's docstring: parsed (not run; their :smoke forms run in
  # tests/core/test_configs.py and above).
  for path in CONFIGS:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    cmds.extend(_commands(path, "", 2, doc))
  return cmds, pys


COMMANDS, PYTHON_BLOCKS = _all()


def _cli_argv(text: str) -> list[str] | None:
  """The clipjax.main arguments of a command (launcher prefixes dropped), else None."""
  tokens = shlex.split(text)
  if "clipjax.main" not in tokens:
    return None
  return tokens[tokens.index("clipjax.main") + 1 :]


def _skip_reason(text: str) -> str | None:
  for pattern, reason in SKIPS:
    if re.search(pattern, text):
      return reason
  return None


def _smoke(argv: list[str]) -> list[str]:
  """Adds `smoke` to the config argument (configs/x.py -> configs/x.py:smoke)."""
  out = []
  for a in argv:
    m = re.fullmatch(r"--config=?(configs/\w+\.py)(?::(.*))?", a)
    if m:
      arg = ",".join(filter(None, [m.group(2), "smoke"]))
      a = f"--config={REPO / m.group(1)}:{arg}"
    out.append(a)
  return out


def parse(argv: list[str]):
  """(config, workdir) exactly as `python -m clipjax.main` parses them."""
  fv = flags.FlagValues()
  holder = config_flags.DEFINE_config_file(
    "config", None, "", flag_values=fv, lock_config=True, sys_argv=["clipjax.main", *argv]
  )
  workdir = flags.DEFINE_string("workdir", None, "", flag_values=fv)
  fv(["clipjax.main", *argv])
  return holder.value, workdir.value


def _normalise(argv: list[str]) -> list[str]:
  """`--config X` -> `--config=X` (and the same for --workdir)."""
  out, i = [], 0
  while i < len(argv):
    if argv[i] in ("--config", "--workdir") and i + 1 < len(argv):
      out.append(f"{argv[i]}={argv[i + 1]}")
      i += 2
    else:
      out.append(argv[i])
      i += 1
  return out


def _config_file(argv: list[str]) -> str:
  for a in argv:
    m = re.search(r"configs/\w+\.py", a)
    if m and a.startswith("--config="):
      return m.group(0)
  raise AssertionError(f"no --config in {argv}")


def _plan(cmd: Command) -> tuple[list[str] | None, str | None]:
  """(clipjax.main argv or None, skip reason or None); fails for an unplanned command."""
  reason = _skip_reason(cmd.text)
  script = re.search(r"python (scripts/[\w/]+\.py)", cmd.text)
  if script is not None and script.group(1) in RETIRED_SCRIPTS:
    assert not (REPO / script.group(1)).exists(), f"{script.group(1)} is back: unlist it"
    return None, f"a recorded command of a retired script: {RETIRED_SCRIPTS[script.group(1)]}"
  assert script is None or (REPO / script.group(1)).exists(), (
    f"{cmd.doc}:{cmd.line}: {script.group(1)} does not exist"
  )
  argv = _cli_argv(cmd.text)
  assert argv is not None or reason is not None, (
    f"{cmd.doc}:{cmd.line}: {cmd.text!r} is neither a clipjax.main command nor covered by a "
    "SKIPS rule in tests/core/test_docs.py; decide how CI should run it"
  )
  return (None if argv is None else _normalise(argv)), reason


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: f"{c.doc}:{c.line}")
def test_doc_command_is_planned_and_parses(cmd, monkeypatch):
  """Cheap, per command: a plan exists, and the smoke form parses as the CLI parses it."""
  argv, reason = _plan(cmd)
  if argv is None:
    pytest.skip(reason)
  if reason is not None and "placeholder" in reason:
    pytest.skip(reason)
  monkeypatch.chdir(REPO)
  # Configs that read the checkpoint they start from at parse time get one that exists.
  base = REPO / "assets" / "bases" / "base_s0"
  argv = [re.sub(r"\b(init|ckpt)=(?:/tmp/|runs/)[\w./-]+", rf"\1={base}", a) for a in argv]
  config, workdir = parse(_smoke(argv))  # catches renamed arguments and overrides
  assert config.get("task", "train") in tasks.TASKS and workdir
  if reason is not None:
    pytest.skip(f"parsed; not run: {reason}")


def _map_paths(argv: list[str], root: pathlib.Path, workdirs: dict[str, str]) -> list[str]:
  """The workdir -> a fresh temporary folder; documented input workdirs -> ones that exist."""
  out = []
  for a in argv:
    if a.startswith("--workdir="):
      value = a.removeprefix("--workdir=")
      workdirs[value] = str(root / re.sub(r"\W", "_", value))
      out.append(f"--workdir={workdirs[value]}")
      continue
    # Whole paths only: a checkout under a directory named runs/ is not a documented workdir.
    for path in re.findall(r"(?<![\w./-])(?:/tmp/|runs/)[\w./-]+", a):
      if path.startswith(str(REPO)):
        continue  # a file of this checkout, which may itself live under /tmp/
      a = a.replace(path, workdirs.get(path, workdirs.get("__quickstart__", path)))
    out.append(a)
  return out


@pytest.mark.slow
def test_doc_commands_run_in_smoke_form(tmp_path, monkeypatch):
  """The first documented command of each config runs in-process, in its :smoke form."""
  monkeypatch.chdir(REPO)
  ran: dict[str, str] = {}
  workdirs: dict[str, str] = {}
  for cmd in COMMANDS:
    argv, reason = _plan(cmd)
    if not cmd.doc.endswith(".md") or argv is None or reason is not None:
      continue
    if _config_file(argv) in ran:
      continue
    config, workdir = parse(_map_paths(_smoke(argv), tmp_path, workdirs))
    tasks.get(config.get("task", "train")).run(config, workdir)
    assert (pathlib.Path(workdir) / "config.json").exists(), f"{cmd.doc}:{cmd.line} wrote nothing"
    ran[_config_file(argv)] = f"{cmd.doc}:{cmd.line}"
    if _config_file(argv) == "configs/quickstart.py":
      workdirs["__quickstart__"] = workdir
  print("ran:", ran)
  assert "configs/quickstart.py" in ran and "configs/eval.py" in ran


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda c: f"{c.doc}:{c.line}")
def test_doc_python_block(block):
  first = block.text.strip().splitlines()[0]
  assert first in PYTHON_SMOKE, (
    f"{block.doc}:{block.line}: python block starting {first!r} has no entry in PYTHON_SMOKE"
  )
  action, arg = PYTHON_SMOKE[first]
  if action == "skip":
    pytest.skip(arg)
  code = block.text
  for old, new in arg.items():
    assert old in code, (
      f"{block.doc}:{block.line}: the smoke substitution {old!r} no longer applies"
    )
    code = code.replace(old, new)
  exec(compile(code, f"{block.doc}:{block.line}", "exec"), {"__name__": "__docs__"})


def test_the_docs_are_read():
  assert sum(c.doc == "README.md" for c in COMMANDS) >= 5
  assert {c.doc for c in COMMANDS} >= {"README.md", "docs/multinode_gpu.md"}
