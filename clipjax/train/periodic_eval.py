"""Evaluation during training: zero-shot and retrieval on `config.eval.datasets`.

Thin glue over the evaluation library (`clipjax.evaluation.suite.evaluate_datasets`), run every
`config.eval.every_steps` and at the end of training; results go to metrics.jsonl (kind "eval")
and summary.json.
"""

from __future__ import annotations

import re
from typing import Any

import ml_collections as mlc

from clipjax.evaluation import suite

__all__ = ["Evaluator", "format_table"]


class Evaluator:
  """Callable `(params, step) -> {metric: value}` over the configured eval datasets."""

  def __init__(self, config: mlc.ConfigDict, model: Any):
    self.config = config
    self.model = model
    self.every = config.eval.every_steps
    self.total = config.total_steps

  def due(self, step: int) -> bool:
    return bool(self.config.eval.datasets) and (
      step == self.total or (self.every > 0 and step % self.every == 0)
    )

  def __call__(self, params: Any, step: int) -> dict[str, Any]:
    if not self.config.eval.datasets:
      return {}
    return suite.evaluate_datasets(
      self.model,
      params,
      self.config.eval.datasets.to_dict(),
      image_size=self.config.data.image_size,
      context_length=self.config.data.context_length,
      batch_size=self.config.eval.batch_size,
      max_examples=self.config.eval.max_examples,
      tokenizer=self.config.data.get("tokenizer", ""),
      zeroshot_ensemble=self.config.eval.zeroshot_ensemble,
    )


_HEADLINE = re.compile(r".*/(zeroshot/.*/acc1|retrieval/.*_recall@(1|5))$")


def format_table(metrics: dict[str, Any], step: int, *, final: bool = False) -> str:
  """Markdown table of the headline eval metrics (top-1 per label set, R@1/R@5) with chance.

  Everything else (top-5, balanced accuracy, counts, throughput) is in metrics.jsonl and
  summary.json.
  """
  rows = [(k, v) for k, v in sorted(metrics.items()) if _HEADLINE.match(k)]
  if not rows:
    return f"(no evaluation at step {step})"
  title = "Final evaluation" if final else "Evaluation"
  lines = [f"{title} at step {step}:", "", "| metric | value | chance |", "|---|---|---|"]
  for k, v in rows:
    chance = metrics.get(f"{k}/chance")
    shown = f"{v:.4f}" if isinstance(v, float) else str(v)
    lines.append(f"| {k} | {shown} | {'' if chance is None else f'{chance:.4f}'} |")
  return "\n".join(lines)
