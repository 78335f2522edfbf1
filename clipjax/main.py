"""Command-line entry point: `python -m clipjax.main --config configs/x.py[:arg] --workdir DIR`.

Thin by design: parse flags, set JAX options, initialise the distributed runtime when
configured, and dispatch `config.task` to its runner's `run(config, workdir)` (`clipjax.tasks`).
Config overrides: `--config.optim.lr=3e-4`; a typo is an error with a suggestion (locked config).
"""

from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

from clipjax import tasks

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Config file, e.g. configs/quickstart.py:smoke.", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Run directory (config.json, metrics.jsonl, checkpoints/)."
)
flags.mark_flags_as_required(["config", "workdir"])


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
  app.run(main)
