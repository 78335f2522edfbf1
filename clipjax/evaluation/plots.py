"""Figures from evaluation results, rendered headless to PNG (matplotlib, the `plot` extra).

Every `plot_*` function takes plain numpy arrays / dicts, writes one PNG and returns its path.
Figures are drawn on `matplotlib.figure.Figure` objects with the Agg canvas, never through
pyplot, so nothing depends on (or changes) the process's interactive backend. matplotlib is
imported lazily: importing this module, and the pure helpers (`pca_2d`,
`robustness_curves`, `read_metrics_jsonl`), work without it.

* `plot_robustness`: robust accuracy vs ε, one line per attack (`robustness_curves` builds the
  lines from an eval `summary.json`).
* `plot_risk_coverage`: selective risk vs coverage, one line per method / label set.
* `plot_similarity_histograms`: cosine similarities of positive vs negative pairs (as NCU's
  Fig. 5).
* `plot_transport_plan`: heatmap of a transport plan.
* `plot_embedding_pca`: image vs text embeddings in their first two principal components (as
  COLA's Fig. 1, the modality gap).
* `plot_training_curves`: loss and evaluation metrics vs step from a workdir's `metrics.jsonl`.
* `plot_workdir`: whatever a workdir's `summary.json` / `metrics.jsonl` supports.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from clipjax import metrics as metrics_lib

__all__ = [
  "pca_2d",
  "plot_embedding_pca",
  "plot_risk_coverage",
  "plot_robustness",
  "plot_similarity_histograms",
  "plot_training_curves",
  "plot_transport_plan",
  "plot_workdir",
  "read_metrics_jsonl",
  "robustness_curves",
  "safe_filename",
]

_DPI = 100
_EVAL_HEADLINE = re.compile(r".*(/acc1|_recall@1)$")


def _figure(width: float = 6.0, height: float = 4.0) -> Any:
  """A pyplot-free Agg figure; a clear error when matplotlib is missing."""
  try:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
  except ImportError as e:
    raise ImportError(
      "clipjax.evaluation.plots needs matplotlib: pip install 'clipjax[plot]'"
    ) from e
  fig = Figure(figsize=(width, height), dpi=_DPI)
  FigureCanvasAgg(fig)
  return fig


def _save(fig: Any, path: str | os.PathLike) -> str:
  path = os.fspath(path)
  parent = os.path.dirname(path)
  if parent:
    os.makedirs(parent, exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, format="png", dpi=_DPI)
  return path


def _vector(x: Any, what: str) -> np.ndarray:
  x = np.asarray(x, np.float64)
  if x.ndim != 1:
    raise ValueError(f"{what} must be 1-D, got shape {x.shape}")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{what} has non-finite values")
  return x


def _curve(name: str, xy: Any, x_name: str, y_name: str) -> tuple[np.ndarray, np.ndarray]:
  try:
    x_raw, y_raw = xy
  except (TypeError, ValueError) as e:
    raise ValueError(f"curve {name!r} must be a pair ({x_name}, {y_name})") from e
  x = _vector(x_raw, f"curve {name!r}: {x_name}")
  y = _vector(y_raw, f"curve {name!r}: {y_name}")
  if x.shape != y.shape:
    raise ValueError(f"curve {name!r}: {x_name} has {x.size} values but {y_name} has {y.size}")
  if x.size == 0:
    raise ValueError(f"curve {name!r} is empty")
  return x, y


def pca_2d(x_nd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Projection on the first two principal components (numpy SVD of the centred data).

  Args:
    x_nd: [n, d] points, n >= 2, d >= 2.

  Returns:
    `(proj_n2, explained_2)`: coordinates and the fraction of variance each component explains.
    The sign of each component is fixed so that its largest-magnitude loading is positive.
  """
  x_nd = np.asarray(x_nd, np.float64)
  if x_nd.ndim != 2 or x_nd.shape[0] < 2 or x_nd.shape[1] < 2:
    raise ValueError(f"pca_2d needs [n >= 2, d >= 2] points, got shape {x_nd.shape}")
  xc_nd = x_nd - x_nd.mean(axis=0, keepdims=True)
  _, s, vt = np.linalg.svd(xc_nd, full_matrices=False)
  vt_2d = vt[:2]
  signs_2 = np.sign(vt_2d[np.arange(2), np.argmax(np.abs(vt_2d), axis=1)])
  vt_2d = vt_2d * signs_2[:, None]
  total = float(np.sum(s**2))
  explained_2 = s[:2] ** 2 / total if total > 0 else np.zeros(2)
  return xc_nd @ vt_2d.T, explained_2


def _family(spec: Mapping[str, Any]) -> str:
  name = str(spec.get("name", "attack"))
  if spec.get("steps"):
    name += f"-{int(spec['steps'])}"
  if spec.get("norm") not in (None, "linf"):
    name += f" {spec['norm']}"
  return name


def robustness_curves(
  summary: Mapping[str, Any],
) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
  """Accuracy-vs-ε lines from an eval summary's robustness entries.

  Reads `{dataset}/robust/{label set}/{attack}/robust_acc` with its `.../eps` entry and
  `.../clean_acc`; attacks of one family (`summary["attacks"][label]`'s name, steps and norm;
  the label itself when the summary has no specs) form one line, which starts at (0, clean).

  Returns:
    `{"{dataset}/{label set}": {family: (eps_k, robust_acc_k)}}`, ε ascending.

  Raises:
    ValueError: an attack entry without its `eps` (summaries written before ε was recorded).
  """
  specs = summary.get("attacks") or {}
  points: dict[str, dict[str, list[tuple[float, float, str]]]] = {}
  for key, value in summary.items():
    if "/robust/" not in key or not key.endswith("/robust_acc"):
      continue
    ds, rest = key.split("/robust/", 1)
    ls, _, label = rest[: -len("/robust_acc")].partition("/")
    if not label or label == "worst_case":
      continue
    eps_key = f"{ds}/robust/{ls}/{label}/eps"
    if eps_key not in summary:
      raise ValueError(f"summary has {key!r} but no {eps_key!r}: re-run the evaluation")
    family = _family(specs[label]) if label in specs else label
    points.setdefault(f"{ds}/{ls}", {}).setdefault(family, []).append(
      (float(summary[eps_key]), float(value), label)
    )
  out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
  for group, families in points.items():
    ds, ls = group.split("/", 1)
    clean = summary.get(f"{ds}/robust/{ls}/clean_acc")
    lines: dict[str, list[tuple[float, float, str]]] = {}
    for family, pts in families.items():
      eps = [p[0] for p in pts]
      if len(set(eps)) == len(eps):
        lines[family] = pts
      else:
        # Several attacks of one family at one ε (e.g. different restarts): one line each.
        lines.update({p[2]: [p] for p in pts})
    out[group] = {}
    for name, pts in sorted(lines.items()):
      pts = sorted(pts)
      if clean is not None and pts[0][0] > 0:
        pts = [(0.0, float(clean), "clean"), *pts]
      out[group][name] = (np.array([p[0] for p in pts]), np.array([p[1] for p in pts]))
  return out


def plot_robustness(
  curves: Mapping[str, tuple[Any, Any]],
  path: str | os.PathLike,
  *,
  title: str = "Robust accuracy",
  chance: float | None = None,
) -> str:
  """Robust accuracy vs ε (shown in units of 1/255), one line per attack.

  Args:
    curves: `{attack: (eps_k, robust_acc_k)}` with ε in pixel units of [0, 1].
    path: output PNG.
    title: axes title.
    chance: optional horizontal chance line.
  """
  if not curves:
    raise ValueError("plot_robustness: no curves")
  fig = _figure()
  ax = fig.add_subplot()
  for name, xy in curves.items():
    eps, acc = _curve(name, xy, "eps", "robust_acc")
    ax.plot(eps * 255.0, acc, marker="o", label=name)
  if chance is not None:
    ax.axhline(chance, color="grey", linestyle=":", label="chance")
  ax.set_xlabel("ε (× 1/255, ℓ∞ pixel units)")
  ax.set_ylabel("accuracy")
  ax.set_ylim(-0.02, 1.02)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, path)


def plot_risk_coverage(
  curves: Mapping[str, tuple[Any, Any]],
  path: str | os.PathLike,
  *,
  title: str = "Selective classification",
) -> str:
  """Selective risk vs coverage, several methods / label sets on one axes.

  Args:
    curves: `{name: (coverage_k, risk_k)}`, coverage in (0, 1].
    path: output PNG.
    title: axes title.
  """
  if not curves:
    raise ValueError("plot_risk_coverage: no curves")
  fig = _figure()
  ax = fig.add_subplot()
  for name, xy in curves.items():
    cov, risk = _curve(name, xy, "coverage", "risk")
    if cov.min() < 0 or cov.max() > 1 or risk.min() < 0 or risk.max() > 1:
      raise ValueError(f"curve {name!r}: coverage and risk must lie in [0, 1]")
    ax.plot(cov, risk, marker="." if cov.size <= 25 else None, label=name)
  ax.set_xlabel("coverage")
  ax.set_ylabel("selective risk (error rate)")
  ax.set_xlim(0, 1.02)
  ax.set_ylim(-0.02, 1.02)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, path)


def plot_similarity_histograms(
  pos_n: np.ndarray,
  neg_m: np.ndarray,
  path: str | os.PathLike,
  *,
  bins: int = 50,
  title: str = "Image–text cosine similarity",
) -> str:
  """Density histograms of positive- and negative-pair similarities on shared bins.

  Args:
    pos_n: [n] similarities of matching pairs.
    neg_m: [m] similarities of non-matching pairs.
    path: output PNG.
    bins: number of bins over the joint range.
    title: axes title.
  """
  pos_n = _vector(pos_n, "pos_n")
  neg_m = _vector(neg_m, "neg_m")
  if pos_n.size == 0 or neg_m.size == 0:
    raise ValueError(f"need positive and negative similarities, got {pos_n.size} and {neg_m.size}")
  lo = min(pos_n.min(), neg_m.min())
  hi = max(pos_n.max(), neg_m.max())
  edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, bins + 1)
  fig = _figure()
  ax = fig.add_subplot()
  ax.hist(neg_m, bins=edges, density=True, alpha=0.6, label=f"negative pairs (n={neg_m.size})")
  ax.hist(pos_n, bins=edges, density=True, alpha=0.6, label=f"positive pairs (n={pos_n.size})")
  ax.set_xlabel("cosine similarity")
  ax.set_ylabel("density")
  ax.set_title(title)
  ax.legend(fontsize=8)
  return _save(fig, path)


def plot_transport_plan(
  plan_nm: np.ndarray,
  path: str | os.PathLike,
  *,
  row_labels: Sequence[str] | None = None,
  col_labels: Sequence[str] | None = None,
  title: str = "Transport plan",
) -> str:
  """Heatmap of a (non-negative) transport plan.

  Args:
    plan_nm: [n, m] plan.
    path: output PNG.
    row_labels: optional n tick labels (e.g. images).
    col_labels: optional m tick labels (e.g. class names).
    title: axes title.
  """
  plan_nm = np.asarray(plan_nm, np.float64)
  if plan_nm.ndim != 2 or 0 in plan_nm.shape:
    raise ValueError(f"plan_nm must be a non-empty [n, m] matrix, got shape {plan_nm.shape}")
  if not np.all(np.isfinite(plan_nm)) or plan_nm.min() < 0:
    raise ValueError("plan_nm must be finite and non-negative")
  n, m = plan_nm.shape
  for labels, size, what in ((row_labels, n, "row"), (col_labels, m, "col")):
    if labels is not None and len(labels) != size:
      raise ValueError(f"{what}_labels has {len(labels)} entries, plan_nm has {size} {what}s")
  fig = _figure(min(10.0, max(5.0, 2.5 + 0.35 * m)), min(10.0, max(3.0, 1.5 + 0.3 * n)))
  ax = fig.add_subplot()
  im = ax.imshow(plan_nm, aspect="auto", cmap="viridis", interpolation="nearest")
  fig.colorbar(im, ax=ax, label="mass")
  if col_labels is not None:
    ax.set_xticks(range(m), [str(c) for c in col_labels], rotation=60, ha="right", fontsize=7)
  if row_labels is not None:
    ax.set_yticks(range(n), [str(r) for r in row_labels], fontsize=7)
  ax.set_title(title, fontsize=9)
  return _save(fig, path)


def plot_embedding_pca(
  zimg_nd: np.ndarray,
  ztxt_md: np.ndarray,
  path: str | os.PathLike,
  *,
  title: str = "Image vs text embeddings (PCA)",
  max_points: int = 1000,
) -> str:
  """Image and text embeddings projected together on their first two principal components.

  Args:
    zimg_nd: [n, d] image embeddings.
    ztxt_md: [m, d] text embeddings.
    path: output PNG.
    title: axes title.
    max_points: plot at most this many points per modality (the first ones; PCA uses them too).
  """
  zimg_nd, ztxt_md = np.asarray(zimg_nd, np.float64), np.asarray(ztxt_md, np.float64)
  if zimg_nd.ndim != 2 or ztxt_md.ndim != 2 or zimg_nd.shape[1] != ztxt_md.shape[1]:
    raise ValueError(
      f"zimg_nd and ztxt_md must be [n, d] and [m, d] with the same d, got {zimg_nd.shape} "
      f"and {ztxt_md.shape}"
    )
  zimg_nd, ztxt_md = zimg_nd[:max_points], ztxt_md[:max_points]
  proj, explained = pca_2d(np.concatenate([zimg_nd, ztxt_md]))
  n = zimg_nd.shape[0]
  fig = _figure(5.0, 4.5)
  ax = fig.add_subplot()
  ax.scatter(proj[:n, 0], proj[:n, 1], s=6, alpha=0.5, label=f"images (n={n})")
  ax.scatter(proj[n:, 0], proj[n:, 1], s=6, alpha=0.5, label=f"texts (n={ztxt_md.shape[0]})")
  ax.set_xlabel(f"PC1 ({100 * explained[0]:.1f} % of variance)")
  ax.set_ylabel(f"PC2 ({100 * explained[1]:.1f} % of variance)")
  ax.set_title(title)
  ax.legend(fontsize=8, markerscale=2)
  return _save(fig, path)


def read_metrics_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """The events of a `metrics.jsonl` file (one JSON object per line, each with `step`).

  Raises:
    ValueError: naming the file and line of a malformed event.
  """
  events = []
  with open(path, encoding="utf-8") as f:
    for i, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        event = metrics_lib.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{i}: not JSON ({e})") from e
      if not isinstance(event, dict) or "step" not in event:
        raise ValueError(f"{path}:{i}: an event must be a JSON object with a 'step'")
      events.append(event)
  return events


def _series(events: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
  pts = [
    (e["step"], e[key])
    for e in events
    if isinstance(e.get(key), int | float) and not isinstance(e.get(key), bool)
    and math.isfinite(e[key])
  ]  # fmt: skip
  return np.array([p[0] for p in pts], np.float64), np.array([p[1] for p in pts], np.float64)


def plot_training_curves(
  events: Sequence[Mapping[str, Any]],
  path: str | os.PathLike,
  *,
  eval_keys: Sequence[str] | None = None,
  title: str = "Training",
) -> str:
  """Training loss (left) and evaluation metrics (right) vs step.

  When every evaluation metric was logged at one step only (e.g. a final evaluation), the right
  panel shows them as horizontal bars instead.

  Args:
    events: `read_metrics_jsonl(...)` events; train events carry `loss`, eval events
      (`kind == "eval"`) the evaluation metrics.
    path: output PNG.
    eval_keys: evaluation metrics to draw; None = every top-1 accuracy and Recall@1 found.
    title: figure title.
  """
  train = [e for e in events if e.get("kind", "train") == "train" and "loss" in e]
  evals = [e for e in events if e.get("kind") == "eval"]
  if eval_keys is None:
    eval_keys = sorted(
      {k for e in evals for k in e if _EVAL_HEADLINE.match(k) and not k.endswith("/chance")}
    )
  else:
    missing = [k for k in eval_keys if not any(k in e for e in evals)]
    if missing:
      raise ValueError(f"eval_keys {missing} are in no eval event")
  if not train and not eval_keys:
    raise ValueError("no training loss and no evaluation metric in the events")
  fig = _figure(12.0 if train and eval_keys else 7.0, 4.0)
  panels = int(bool(train)) + int(bool(eval_keys))
  if train:
    ax = fig.add_subplot(1, panels, 1)
    steps, loss = _series(train, "loss")
    ax.plot(steps, loss, marker="." if steps.size <= 50 else None, label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
  if eval_keys:
    ax = fig.add_subplot(1, panels, panels)
    series = {k: _series(evals, k) for k in eval_keys}
    if all(np.unique(steps).size <= 1 for steps, _ in series.values()):
      # One evaluation (e.g. only the final one): a bar per metric reads better than dots.
      step = next((int(st[0]) for st, _ in series.values() if st.size), 0)
      values = [float(v[-1]) if v.size else float("nan") for _, v in series.values()]
      ax.barh(range(len(eval_keys)), values, color="tab:blue")
      ax.set_yticks(range(len(eval_keys)), list(eval_keys), fontsize=6)
      ax.invert_yaxis()
      ax.set_xlim(0, 1)
      ax.set_xlabel(f"evaluation metric at step {step}")
      ax.grid(alpha=0.3, axis="x")
    else:
      for k, (steps, vals) in series.items():
        ax.plot(steps, vals, marker="o", label=k)
      ax.set_xlabel("step")
      ax.set_ylabel("evaluation metric")
      ax.set_ylim(-0.02, 1.02)
      ax.grid(alpha=0.3)
      ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  fig.suptitle(title)
  return _save(fig, path)


def safe_filename(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name).strip("_") or "x"


def plot_workdir(workdir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> list[str]:
  """Renders every figure a workdir's `summary.json` and `metrics.jsonl` support.

  * `training_curves.png` when metrics.jsonl has training losses (a trainer workdir);
  * `robustness_{dataset}_{label set}.png` per robustness group in summary.json;
  * `risk_coverage_{dataset}.png` per dataset with risk–coverage curves in summary.json
    (`summary["curves"]["{dataset}/selective/{label set}/{selector}"]`).

  Args:
    workdir: run directory.
    out_dir: where to write (default: `workdir`).

  Returns:
    Paths written (possibly none).
  """
  workdir = os.fspath(workdir)
  out_dir = workdir if out_dir is None else os.fspath(out_dir)
  written = []
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(metrics_path):
    events = read_metrics_jsonl(metrics_path)
    if any(e.get("kind", "train") == "train" and "loss" in e for e in events):
      written.append(
        plot_training_curves(
          events, os.path.join(out_dir, "training_curves.png"), title=os.path.basename(workdir)
        )
      )
  summary_path = os.path.join(workdir, "summary.json")
  if not os.path.exists(summary_path):
    return written
  with open(summary_path, encoding="utf-8") as f:
    summary = json.load(f)
  for group, lines in robustness_curves(summary).items():
    ds, ls = group.split("/", 1)
    chance = summary.get(f"{ds}/robust/{ls}/clean_acc/chance")
    written.append(
      plot_robustness(
        lines,
        os.path.join(out_dir, f"robustness_{safe_filename(ds)}_{safe_filename(ls)}.png"),
        title=f"{ds}: zero-shot {ls} under attack",
        chance=chance,
      )
    )
  by_ds: dict[str, dict[str, tuple[Any, Any]]] = {}
  for key, curve in (summary.get("curves") or {}).items():
    if "/selective/" not in key:
      continue
    ds, name = key.split("/selective/", 1)
    by_ds.setdefault(ds, {})[name] = (curve["coverage"], curve["risk"])
  for ds, lines in by_ds.items():
    written.append(
      plot_risk_coverage(
        lines,
        os.path.join(out_dir, f"risk_coverage_{safe_filename(ds)}.png"),
        title=f"{ds}: selective zero-shot classification",
      )
    )
  return written
