"""The `train` task: `python -m clipjax.main --config configs/<x>.py --workdir DIR`.

Checks the config and the data (`clipjax.train.loop.setup`) before anything is written, claims
DIR (`clipjax.runs.open_run`), trains (`clipjax.train.loop.train`) and writes
`DIR/summary.json`. Re-running the same command resumes from the latest checkpoint. A resume
may extend `total_steps` (the learning-rate schedule is then recomputed over the new length,
and the log says what that does at the resumed step) and change anything outside
`RESUME_KEYS` (eval/log/checkpoint cadence, eval datasets); a change in `RESUME_KEYS` is
refused with the list of differences. A directory with no checkpoint yet (a failed start) is
not a resume: the new config replaces the old one.
"""

from __future__ import annotations

import copy
from typing import Any

import jax
import ml_collections as mlc

from clipjax import config_lib, runs
from clipjax.train import loop, optim, periodic_eval

__all__ = ["RESUME_KEYS", "resume_diffs", "run"]

# Changing these between a checkpoint and a resume would silently change the experiment (or
# break the saved iterator/optimizer state), so a difference refuses to resume. `total_steps`
# may grow (with the last entry of `stages`, if any).
RESUME_KEYS = [
  "seed",
  "model",
  "method",
  "data.train",
  "data.batch_size",
  "data.image_size",
  "data.num_workers",
  "data.context_length",
  "data.train_labels",
  "optim",
  "stages",
]


def _without_last_stage_steps(cfg: dict[str, Any]) -> dict[str, Any]:
  cfg = copy.deepcopy(cfg)
  stages = cfg.get("stages") or []
  if stages and isinstance(stages[-1], dict):
    stages[-1].pop("steps", None)
  return cfg


def resume_diffs(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
  """The differences between a saved and a new train config that forbid resuming."""
  return config_lib.diff_configs(
    _without_last_stage_steps(old), _without_last_stage_steps(new), RESUME_KEYS
  )


def _log_resume_changes(run: runs.Run, config: mlc.ConfigDict) -> None:
  """Says what a resume changes: every other setting, and the schedule if `total_steps` grew."""
  changed = runs.config_diffs(run.previous, run.config)
  if changed:
    print("Resuming with changed settings:\n  " + "\n  ".join(changed), flush=True)
  old_total = int(run.previous.get("total_steps", config.total_steps))
  if old_total == config.total_steps or not run.checkpoint_steps:
    return
  step = max(run.checkpoint_steps)
  before = float(optim.make_schedule(config.optim, old_total)(step))
  after = float(optim.make_schedule(config.optim, config.total_steps)(step))
  print(
    f"total_steps {old_total} -> {config.total_steps}: the learning-rate schedule (warmup "
    f"{config.optim.warmup_frac:g} of the steps, cosine decay to {config.optim.end_lr_frac:g}"
    f" x lr) now spans {config.total_steps} steps; at the resumed step {step} the learning "
    f"rate goes from {before:.3g} to {after:.3g}.",
    flush=True,
  )


def run(config: mlc.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains per `config` in `workdir`; returns the final summary dict."""
  init = config.model.init_checkpoint
  if init and not config.data.tokenizer:
    # A model trained from a clipjax run keeps that run's tokenizer; config.json records it.
    config.data.tokenizer = runs.trained_tokenizer(init)
  run_dir = runs.open_run(workdir, config, task="train", compare=resume_diffs)
  if run_dir.checkpoint_steps and config.total_steps < max(run_dir.checkpoint_steps):
    raise ValueError(
      f"Refusing to resume in {workdir!r}: total_steps={config.total_steps} but the run "
      f"already has a checkpoint at step {max(run_dir.checkpoint_steps)}. Use another "
      "--workdir, or a total_steps of at least that."
    )
  trainer = loop.setup(config)
  try:
    run_dir.start()
    if run_dir.resuming:
      _log_resume_changes(run_dir, config)
    summary = loop.train(trainer, workdir)
  finally:
    trainer.close()
  run_dir.write_summary(summary)
  if jax.process_index() == 0:
    print(periodic_eval.format_table(summary, summary["step"], final=True), flush=True)
    print(f"Wrote {run_dir.path / runs.SUMMARY}", flush=True)
  return summary
