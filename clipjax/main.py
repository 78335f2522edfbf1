"""Command-line entry point: `python -m clipjax.main --config configs/x.py[:arg] --workdir DIR`.

Thin by design: parse flags, set JAX options, initialise the distributed runtime when
configured, and dispatch `config.task` to its runner's `run(config, workdir)` (`clipjax.tasks`).
Config overrides: `--config.optim.lr=3e-4`; a typo is an error with a suggestion (locked config).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from clipjax import config_lib, tasks

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Config file, e.g. configs/quickstart.py:smoke.", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Run directory (config.json, metrics.jsonl, checkpoints/)."
)
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a config-key typo as one short message instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError):
    config = _load_config(argv)
    for arg in argv[1:]:
      if config is not None and arg.startswith("--config."):
        why = config_lib.unknown_key(config, arg[len("--config.") :].split("=", 1)[0])
        if why:
          sys.exit(f"{arg}: {why}")
    raise


def _load_config(argv: list[str]):
  """The config `--config path[:arg]` names (what config_flags loads), or None."""
  for i, arg in enumerate(argv):
    if arg in ("--config", "-config") and i + 1 < len(argv):
      spec = argv[i + 1]
    elif arg.startswith(("--config=", "-config=")):
      spec = arg.split("=", 1)[1]
    else:
      continue
    return config_lib.load(spec)
  return None


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    # orbax logs every checkpoint step at INFO; keep the console to progress lines by default
    # (pass --verbosity=0 to see them).
    logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  task = config.get("task", "train")
  if task not in tasks.TASKS:
    raise app.UsageError(f"Unknown config.task {task!r}; valid tasks: {sorted(tasks.TASKS)}.")
  from clipjax import sharding

  sharding.maybe_initialize_distributed(config.get("distributed", "auto"))
  tasks.get(task).run(config, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
