"""OT-CLIP (Shi, Fan, Yan, ICML 2024): training losses from scratch, then OT inference.

Grid: `configs/otclip.py:loss=<loss>,small,steps=300,seed=<s>` for the six losses × seeds (no
base: every loss trains from scratch; the same seed gives the same init and batches, so runs
with one seed are paired). After each run, `infer` evaluates the checkpoint on the synthetic
`test` split (`colour+shape` and `position` label sets): zero-shot argmax vs FGW zero-shot (α1·α2
picked on `val`), long-tailed zero-shot on an imbalanced test subset (argmax, logit adjustment,
balanced and label-prior Sinkhorn) and selective classification risk (max softmax probability vs
partial OT). ε for all OT inference = 1/logit_scale of the checkpoint.
"""

from __future__ import annotations

import numpy as np

from repro.grid import Claim, Column, Run, Table, read_json

SEEDS = 3
BASES = 0  # trained from scratch
LOSSES = ("infonce", "entropic", "dbot", "uot", "fgw", "ufgw")
LABEL_SETS = ("colour+shape", "position")
STEPS = 300
IMBALANCE = 10.0  # long-tailed subset: head/tail count ratio
FULL_EVAL = {"n_test": 1000, "aa_grid": [1e-5, 1e-4, 3e-4, 1e-3, 3e-3]}
QUICK_EVAL = {"n_test": 256, "aa_grid": [1e-4, 1e-3]}
_RETRIEVAL = "shapes_test/retrieval/{}_retrieval_recall_identical@1"


def grid(quick: bool, seeds: int, bases: int) -> list[Run]:
  del bases  # no base checkpoint: OT-CLIP's claims are about training from scratch
  size = "smoke" if quick else f"small,steps={STEPS}"
  return [
    Run(
      name=f"{loss}_s{s}",
      config=f"configs/otclip.py:loss={loss},{size},seed={s}",
      group=loss,
      seed=s,
      evaluate="infer",
      eval_args=QUICK_EVAL if quick else FULL_EVAL,
    )
    for s in range(seeds)
    for loss in LOSSES
  ]


def _encode_split(model, split, n_test, tok):
  """First `n_test` images of a synthetic split: ([n, d] unit embeddings, labels, label sets)."""
  import jax
  import jax.numpy as jnp

  from clipjax.data import pipeline, registry
  from clipjax.data.sources import label_sets_of

  image_size = model.config.vision.image_size
  src = registry.build_source({"name": "synthetic", "split": split, "seed": 0}, image_size)
  enc = jax.jit(lambda p, x: model.encode_image(p, x).emb)
  zs, labels, n = [], {k: [] for k in LABEL_SETS}, 0
  for b in pipeline.iterate_eval(src, batch_size=250, image_size=image_size, tokenize=tok):
    keep = np.asarray(b["valid"])
    zs.append(np.asarray(enc(model.params, jnp.asarray(b["image"])))[keep])
    for k in LABEL_SETS:
      labels[k].append(np.asarray(b["labels"][k])[keep])
    n += int(keep.sum())
    if n >= n_test:
      break
  z_nd = np.concatenate(zs)[:n_test]
  z_nd = z_nd / np.linalg.norm(z_nd, axis=1, keepdims=True)
  return z_nd, {k: np.concatenate(v)[:n_test] for k, v in labels.items()}, label_sets_of(src)


def _acc(scores_nc, y_n) -> float:
  return float(np.mean(np.argmax(np.asarray(scores_nc), axis=1) == y_n))


def _mpcr(scores_nc, y_n, num_classes: int) -> float:
  """Mean per-class recall over the classes present in `y_n`."""
  pred = np.argmax(np.asarray(scores_nc), axis=1)
  present = [k for k in range(num_classes) if (y_n == k).any()]
  return float(np.mean([np.mean(pred[y_n == k] == k) for k in present]))


def longtail_indices(y_n, num_classes: int, rng):
  """Keeps `n_min · IMBALANCE^(-rank/(C-1))` images of each class, classes ranked at random.

  Raises:
    ValueError: a class has no image (its prior would be 0).
  """
  counts = np.bincount(y_n, minlength=num_classes)
  if counts.min() == 0:
    raise ValueError(
      f"long-tailed subset: classes {np.flatnonzero(counts == 0).tolist()} have no test image; "
      "evaluate more images (n_test)"
    )
  order = rng.permutation(num_classes)
  keep = []
  for rank, c in enumerate(order):
    n_c = max(1, int(round(counts.min() * IMBALANCE ** (-rank / (num_classes - 1)))))
    keep.extend(np.flatnonzero(y_n == c)[:n_c])
  return np.sort(np.array(keep))


def infer(workdir: str, n_test: int, aa_grid: list[float]) -> dict:
  """All OT-inference numbers of one trained workdir (the driver writes them to the workdir)."""
  import jax
  import jax.numpy as jnp

  from clipjax import model as model_lib
  from clipjax.data.tokenizer import Tokenizer
  from clipjax.evaluation import zeroshot
  from clipjax.evaluation.metrics import selective_risk
  from clipjax.methods import otclip

  model = model_lib.load(workdir)
  params = model.params
  tok = Tokenizer(None, context_length=model.config.text.context_length)
  scale = float(np.exp(np.asarray(params["logit_scale"])))
  eps = 1.0 / scale
  enc_txt = jax.jit(lambda p, x: model.encode_text(p, x).emb)
  out = {"logit_scale": scale, "n_test": n_test}
  zval, yval, _ = _encode_split(model, "val", n_test, tok)
  zte, yte, sets = _encode_split(model, "test", n_test, tok)
  for ls in LABEL_SETS:
    clf = zeroshot.build_classifier(
      lambda x: enc_txt(params, jnp.asarray(x)), tok, sets[ls].classnames, sets[ls].templates
    )
    t_cd = np.asarray(clf.weights_cd)
    c = t_cd.shape[0]
    y = yte[ls]

    def fgw(z, aa, t_cd=t_cd):
      return otclip.fgw_zeroshot(z, t_cd, alpha1=aa, alpha2=1.0, epsilon=eps, num_iters=5)

    r = {"argmax": _acc(zte @ t_cd.T, y)}
    val_accs = {aa: _acc(fgw(zval, aa), yval[ls]) for aa in aa_grid}
    r["fgw_aa"] = max(val_accs, key=val_accs.get)
    r["fgw"] = _acc(fgw(zte, r["fgw_aa"]), y)
    idx = longtail_indices(y, c, np.random.default_rng(0))
    zl, yl = zte[idx], y[idx]
    prior_c = np.bincount(yl, minlength=c) / yl.size
    s_prior, diag = otclip.prior_sinkhorn(zl, t_cd, prior_c, epsilon=eps)
    r.update(
      lt_n=int(yl.size),
      lt_argmax=_acc(zl @ t_cd.T, yl),
      lt_logit_adjust=_acc(scale * (zl @ t_cd.T) + np.log(prior_c), yl),
      lt_balanced_sinkhorn=_acc(otclip.prior_sinkhorn(zl, t_cd, None, epsilon=eps)[0], yl),
      lt_prior_sinkhorn=_acc(s_prior, yl),
      lt_prior_converged=float(diag["ot/converged"]),
      lt_argmax_mpcr=_mpcr(zl @ t_cd.T, yl, c),
      lt_prior_mpcr=_mpcr(s_prior, yl, c),
    )
    prob = np.asarray(jax.nn.softmax(scale * (zte @ t_cd.T), axis=1))
    msp = selective_risk(prob.max(1), prob.argmax(1) == y, (0.5, 0.8, 1.0))
    r.update({f"sel_msp_{k}": float(v) for k, v in msp.items()})
    for s in (0.5, 0.8):
      pred, _, sel = otclip.partial_ot_selective(zte, t_cd, coverage=s, epsilon=eps)
      sel = np.asarray(sel)
      r[f"sel_pot_risk@{s:g}"] = float(np.mean(np.asarray(pred)[sel] != y[sel]))
    out[ls] = r
  return out


def metrics(run: Run, workdir: str) -> dict[str, float]:
  summary = read_json(workdir, "summary.json")
  inf = read_json(workdir, "repro_infer.json")
  out = {"logit_scale": inf["logit_scale"]}
  for ls in LABEL_SETS:
    out.update({f"{ls}/{k}": float(v) for k, v in inf[ls].items()})
  out["zeroshot_mean"] = sum(inf[ls]["argmax"] for ls in LABEL_SETS) / len(LABEL_SETS)
  for side in ("image", "text"):
    key = _RETRIEVAL.format(side)
    if key not in summary:
      raise KeyError(f"{workdir}/summary.json has no {key!r}")
    out[f"{side}_R@1"] = summary[key]
  return out


TABLES = (
  Table(
    "Zero-shot top-1 (%) on the test images, argmax vs FGW inference; retrieval R@1 (%)",
    (
      Column("logit_scale", "1/ε (final logit_scale)", 1.0),
      *(
        Column(f"{ls}/{k}", f"{ls} {title}")
        for ls in LABEL_SETS
        for k, title in (("argmax", "argmax"), ("fgw", "FGW"))
      ),
      Column("image_R@1", "image R@1 (text query)"),
      Column("text_R@1", "text R@1 (image query)"),
    ),
    LOSSES,
  ),
  Table(
    f"Long-tailed zero-shot (imbalance {IMBALANCE:g}, known prior): top-1 and mean per-class "
    "recall (MPCR), %",
    (
      Column("{row}/lt_argmax", "argmax"),
      Column("{row}/lt_logit_adjust", "logit adj. (+log π)"),
      Column("{row}/lt_balanced_sinkhorn", "balanced Sinkhorn"),
      Column("{row}/lt_prior_sinkhorn", "prior Sinkhorn (b = π)"),
      Column("{row}/lt_argmax_mpcr", "argmax MPCR"),
      Column("{row}/lt_prior_mpcr", "prior Sinkhorn MPCR"),
    ),
    LOSSES,
    LABEL_SETS,
  ),
  Table(
    "Selective classification: risk (error %, lower is better) at 50 % / 80 % coverage",
    (
      Column("{row}/sel_msp_risk@1", "full-coverage error"),
      Column("{row}/sel_msp_risk@0.5", "MSP risk@50%"),
      Column("{row}/sel_pot_risk@0.5", "partial OT risk@50%"),
      Column("{row}/sel_msp_risk@0.8", "MSP risk@80%"),
      Column("{row}/sel_pot_risk@0.8", "partial OT risk@80%"),
    ),
    LOSSES,
    LABEL_SETS,
  ),
)

_PAPER_T1 = "CC3M, 18-dataset avg zero-shot (Table 1): "
CLAIMS = (
  Claim(
    "OT ≈ InfoNCE",
    "entropic-OT training matches InfoNCE (mean zero-shot top-1 over the label sets, ± 2 pt)",
    "zeroshot_mean",
    "zeroshot_mean",
    ("entropic",),
    "infonce",
    0,
    _PAPER_T1 + "entropic 18.7 vs InfoNCE 19.2",
    margin=0.02,
  ),
  Claim(
    "FGW > InfoNCE",
    "FGW training beats InfoNCE",
    "zeroshot_mean",
    "zeroshot_mean",
    ("fgw",),
    "infonce",
    1,
    _PAPER_T1 + "FGW 20.6 vs InfoNCE 19.2",
  ),
  Claim(
    "FGW > entropic",
    "FGW training beats entropic OT",
    "zeroshot_mean",
    "zeroshot_mean",
    ("fgw",),
    "entropic",
    1,
    _PAPER_T1 + "FGW 20.6 vs entropic 18.7",
  ),
  Claim(
    "UFGW > InfoNCE",
    "unbalanced FGW training beats InfoNCE",
    "zeroshot_mean",
    "zeroshot_mean",
    ("ufgw",),
    "infonce",
    1,
    _PAPER_T1 + "U-FG 20.1 vs InfoNCE 19.2",
  ),
  *(
    Claim(
      f"FGW inference ({ls})",
      "FGW zero-shot inference beats argmax on the same checkpoint (all losses pooled)",
      f"{ls}/fgw",
      f"{ls}/argmax",
      LOSSES,
      None,
      1,
    )
    for ls in LABEL_SETS
  ),
  *(
    Claim(
      f"prior OT, long-tailed ({ls})",
      "label-prior Sinkhorn beats argmax on a long-tailed test set (all losses pooled)",
      f"{ls}/lt_prior_sinkhorn",
      f"{ls}/lt_argmax",
      LOSSES,
      None,
      1,
    )
    for ls in LABEL_SETS
  ),
  *(
    Claim(
      f"partial-OT selective ({ls})",
      "partial-OT selection has lower risk than max softmax probability at 50 % coverage "
      "(all losses pooled)",
      f"{ls}/sel_pot_risk@0.5",
      f"{ls}/sel_msp_risk@0.5",
      LOSSES,
      None,
      -1,
    )
    for ls in LABEL_SETS
  ),
)
