"""Task runners: `run(config, workdir)` per `config.task`, each thin over the libraries.

A runner checks its config and data, claims its run directory through `clipjax.runs` (which
refuses a directory another task or config owns), composes the libraries (`clipjax.train`,
`clipjax.evaluation`, `clipjax.fusion`, `clipjax.methods`) and writes `summary.json`. Only
runners import the training loop (`clipjax.train.loop`).
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["TASKS", "get"]

# task name -> module with `run(config, workdir)`; imported lazily so `--help` stays fast.
TASKS = {
  "train": "clipjax.tasks.train",
  "eval": "clipjax.tasks.eval",
  "cola_eval": "clipjax.tasks.cola_eval",
  "hotclip_fuse": "clipjax.tasks.hotclip_fuse",
}


def get(task: str) -> ModuleType:
  """The runner module of `task`; an unknown name is an error listing the valid ones."""
  if task not in TASKS:
    raise ValueError(f"Unknown config.task {task!r}; valid tasks: {sorted(TASKS)}.")
  return importlib.import_module(TASKS[task])
