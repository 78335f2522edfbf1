"""The ``cola_eval`` task: clean and robust accuracy of COLA and its ablations on a checkpoint.

``run(config, workdir)`` (dispatched by ``clipjax.main`` for ``config.task == "cola_eval"``,
see ``configs/cola.py``):

1. builds the model as the trainer does (``config.model``, ``config.data.image_size`` /
   ``context_length``; ``config.model.init_checkpoint`` = a clipjax workdir or a checkpoint file;
   a clipjax workdir brings its own model, image size, context length and, unless
   ``config.data.tokenizer`` is set, tokenizer from its config.json);
2. reads the first ``config.eval.max_examples`` examples of ``config.eval.dataset`` and the label
   set ``config.eval.label_set`` (its class names and templates; optional descriptions from
   ``config.cola.descriptions_path``);
3. evaluates the plain zero-shot classifier (``base``) and every COLA variant in
   ``config.cola.variants`` (``ColaConfig`` overrides of ``config.cola.base``) under
   ``config.attacks`` with COLA's robust-evaluation protocol
   (``clipjax.evaluation.cola_protocol``: clean, transfer and adaptive accuracy, the
   per-example worst case per threat model and the gradient-masking check; adaptive attacks
   for ``config.adaptive_variants`` with ``config.eot_draws`` view draws per gradient);
4. measures COLA's overhead beyond the N image-encoder passes, and writes ``summary.json`` (with
   ``robust_examples``: per step ``"<attack>/transfer"`` → classifier → indices, and
   ``"<attack>/adaptive/<variant>"`` → indices, of the examples left correct) and ``results.md``
   (a markdown table) to ``workdir``.

Adaptive attacks through COLA take minutes per (variant, attack) on a CPU. After each transfer
attack and each adaptive (attack, variant) the results so far, per example, are saved to
``workdir/results.partial.json``; rerunning the same config in the same workdir resumes from it
(a different config there is refused by ``clipjax.runs.open_run``, naming the file). It is
removed once ``summary.json`` is written.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections as mlc
from etils import epath

from clipjax import runs
from clipjax.data.tokenizer import Tokenizer
from clipjax.evaluation import cola_protocol
from clipjax.methods import cola

__all__ = ["merges_path", "run"]


def merges_path(config: mlc.ConfigDict) -> str | None:
  """``config.data.tokenizer``, else the checkpoint workdir's, else None (OpenAI's, shipped)."""
  init = config.model.get("init_checkpoint") or ""
  return config.data.get("tokenizer") or (init and runs.trained_tokenizer(init)) or None


class _Progress:
  """Per-step results of an unfinished run (``results.partial.json``), so a rerun resumes.

  A ``cola_protocol.Store``. Only a run of the same config gets here (``clipjax.runs.open_run``
  refuses any other).
  """

  def __init__(self, wdir: epath.Path):
    self.path = wdir / "results.partial.json"
    self.state: dict[str, Any] = {"steps": {}}
    if self.path.exists():
      self.state = runs.read_json(self.path)
      print(f"resuming from {self.path}: {len(self.state['steps'])} attack steps done", flush=True)

  def get(self, step: str) -> dict[str, Any] | None:
    return self.state["steps"].get(step)

  def put(self, step: str, value: dict[str, Any]) -> None:
    self.state["steps"][step] = value
    runs.write_json(self.path, self.state)

  def finish(self) -> None:
    self.path.unlink(missing_ok=True)


def run(config: mlc.ConfigDict, workdir: str) -> dict[str, Any]:
  """Evaluates COLA per ``config`` (see module docstring); returns the results dict."""
  run_dir = runs.open_run(workdir, config, task="cola_eval")
  model = runs.build_model(
    config.model.to_dict(),
    config.data.image_size,
    config.data.context_length,
    jax.random.key(config.seed),
  )
  params = model.params
  ev = config.eval
  x, y, lset = cola_protocol.load_examples(
    ev.dataset.to_dict(), ev.label_set, model.config.vision.image_size, ev.max_examples
  )
  tok = Tokenizer(merges_path(config), context_length=model.config.text.context_length)
  encode_image = lambda px: model.encode_image(params, px).emb
  ccfg = config.cola
  descriptions = None
  if ccfg.descriptions_path:
    descriptions = cola.load_descriptions(ccfg.descriptions_path, lset.classnames)
  classifiers = cola_protocol.build_classifiers(
    encode_image,
    jax.jit(lambda ids: model.encode_text(params, ids).emb),
    tok,
    lset.classnames,
    lset.templates,
    base=ccfg.base.to_dict(),
    variants=ccfg.variants.to_dict(),
    descriptions=descriptions,
    max_descriptions=ccfg.max_descriptions,
  )
  results: dict[str, Any] = {
    "n": int(x.shape[0]),
    "num_classes": len(lset.classnames),
    "label_set": ev.label_set,
    "variants": {n: dataclasses.asdict(v) for n, v in classifiers.variants.items()},
  }
  progress = _Progress(run_dir.path)
  key = jax.random.key(config.seed)
  results |= cola_protocol.evaluate(
    classifiers,
    x,
    y,
    [a.to_dict() if hasattr(a, "to_dict") else dict(a) for a in config.attacks],
    key=key,
    batch_size=ev.batch_size,
    adaptive_variants=config.adaptive_variants,
    eot_draws=config.eot_draws,
    store=progress,
    # Config, data, model and tokenizer have all worked: claim the directory.
    on_clean=lambda _: run_dir.start(),
  )
  results["timing"] = cola_protocol.overhead(classifiers, encode_image, x[: ev.batch_size], key)
  table = cola_protocol.format_results(results)
  (run_dir.path / "results.md").write_text(table)
  run_dir.write_summary(results)
  progress.finish()
  print(table, flush=True)
  return results
