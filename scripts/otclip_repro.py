"""OT-CLIP small-scale reproduction: inference on trained workdirs, seed tables, loss timing.

Training is done by `scripts/otclip_repro.sh` (one `python -m clipjax.main` run per loss and
seed, `configs/otclip.py:loss=<loss>,small,steps=300,seed=<seed>`, into `ROOT/<loss>_s<seed>`).
This script then evaluates and tabulates (see docs/results/otclip.md):

  python scripts/otclip_repro.py infer ROOT/entropic_s1 ...   # writes WORKDIR/otclip_infer.json
  python scripts/otclip_repro.py table ROOT                   # markdown tables, mean ± std
  python scripts/otclip_repro.py bench 64 256                 # loss+grad ms per OT loss
  python scripts/otclip_repro.py stepbench 64                 # whole train step per loss

`infer` encodes the first 1000 images of the synthetic `val` and `test` splits and, for the
`colour+shape` and `position` label sets, reports: zero-shot argmax vs FGW zero-shot (α1·α2 picked
on val), long-tailed zero-shot on an imbalanced test subset (argmax, logit adjustment, balanced and
label-prior Sinkhorn), and selective classification risk at 50 % / 80 % coverage (max softmax
probability vs partial OT). ε for all OT inference = 1/logit_scale of the checkpoint.
"""

import argparse
import glob
import json
import os
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from clipjax import losses, runs
from clipjax.data import pipeline, registry
from clipjax.data.sources import label_sets_of
from clipjax.data.tokenizer import Tokenizer
from clipjax.evaluation import zeroshot
from clipjax.methods import otclip

N_TEST = 1000  # images per split; the transductive batch is the whole (sub)set
LABEL_SETS = ("colour+shape", "position")
AA_GRID = (1e-5, 1e-4, 3e-4, 1e-3, 3e-3)  # FGW α1·α2 candidates, chosen on the val split
IMBALANCE = 10.0  # long-tailed subset: head/tail count ratio
LOSS_ORDER = ("infonce", "entropic", "dbot", "uot", "fgw", "ufgw")
# The OT hyper-parameters of configs/otclip.py, for the loss-only timing.
BENCH_VARIANTS = {
  "entropic": {},
  "dbot": {"delta": 0.5},
  "uot": {"rho_a": 1.0, "rho_b": 1.0},
  "fgw": {"alpha": 0.1, "outer_iters": 3},
  "ufgw": {"alpha": 0.1, "outer_iters": 3, "rho_a": 1.0, "rho_b": 1.0},
}


def _encode_split(model, params, split, image_size, tok):
  """First `N_TEST` images of a synthetic split: ([n, d] unit embeddings, labels, label sets)."""
  src = registry.build_source({"name": "synthetic", "split": split, "seed": 0}, image_size)
  enc = jax.jit(lambda p, x: model.encode_image(p, x).emb)
  zs, labels, n = [], {k: [] for k in LABEL_SETS}, 0
  for b in pipeline.iterate_eval(src, batch_size=250, image_size=image_size, tokenize=tok):
    keep = np.asarray(b["valid"])
    zs.append(np.asarray(enc(params, jnp.asarray(b["image"])))[keep])
    for k in LABEL_SETS:
      labels[k].append(np.asarray(b["labels"][k])[keep])
    n += int(keep.sum())
    if n >= N_TEST:
      break
  z_nd = np.concatenate(zs)[:N_TEST]
  z_nd = z_nd / np.linalg.norm(z_nd, axis=1, keepdims=True)
  return z_nd, {k: np.concatenate(v)[:N_TEST] for k, v in labels.items()}, label_sets_of(src)


def _acc(scores_nc, y_n) -> float:
  return float(np.mean(np.argmax(np.asarray(scores_nc), axis=1) == y_n))


def _mpcr(scores_nc, y_n, num_classes: int) -> float:
  """Mean per-class recall over the classes present in `y_n`."""
  pred = np.argmax(np.asarray(scores_nc), axis=1)
  present = [k for k in range(num_classes) if (y_n == k).any()]
  return float(np.mean([np.mean(pred[y_n == k] == k) for k in present]))


def _longtail_indices(y_n, num_classes: int, rng) -> np.ndarray:
  """Keeps `n_min · IMBALANCE^(-rank/(C-1))` images of each class, classes ranked at random."""
  order = rng.permutation(num_classes)
  n_min = np.bincount(y_n, minlength=num_classes).min()
  keep = []
  for rank, c in enumerate(order):
    n_c = max(1, int(round(n_min * IMBALANCE ** (-rank / (num_classes - 1)))))
    keep.extend(np.flatnonzero(y_n == c)[:n_c])
  return np.sort(np.array(keep))


def infer(workdir: str) -> dict:
  """All OT-inference numbers of one trained workdir (also written to WORKDIR/otclip_infer.json)."""
  model = runs.load_model(workdir)
  params, cfg = model.params, model.config
  image_size = cfg.vision.image_size
  tok = Tokenizer(None, context_length=cfg.text.context_length)
  scale = float(np.exp(np.asarray(params["logit_scale"])))
  eps = 1.0 / scale
  enc_txt = jax.jit(lambda p, x: model.encode_text(p, x).emb)
  out = {"workdir": workdir, "logit_scale": scale}
  zval, yval, _ = _encode_split(model, params, "val", image_size, tok)
  zte, yte, sets = _encode_split(model, params, "test", image_size, tok)
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
    val_accs = {aa: _acc(fgw(zval, aa), yval[ls]) for aa in AA_GRID}
    r["fgw_aa"] = max(val_accs, key=val_accs.get)
    r["fgw"] = _acc(fgw(zte, r["fgw_aa"]), y)
    idx = _longtail_indices(y, c, np.random.default_rng(0))
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
    msp = otclip.risk_coverage(prob.argmax(1), prob.max(1), y, (0.5, 0.8, 1.0))
    r.update({f"sel_msp_{k}": float(v) for k, v in msp.items()})
    for s in (0.5, 0.8):
      pred, _, sel = otclip.partial_ot_selective(zte, t_cd, coverage=s, epsilon=eps)
      sel = np.asarray(sel)
      r[f"sel_pot_risk@{s:g}"] = float(np.mean(np.asarray(pred)[sel] != y[sel]))
    out[ls] = r
  with open(os.path.join(workdir, "otclip_infer.json"), "w") as f:
    json.dump(out, f)
  return out


def _runs(root: str) -> dict[str, list[str]]:
  """{loss: [workdir, ...]} for every ROOT/<loss>_s<seed> holding otclip_infer.json."""
  found: dict[str, list[str]] = {}
  for path in sorted(glob.glob(os.path.join(root, "*_s*", "otclip_infer.json"))):
    m = re.fullmatch(r"(\w+?)_s(\d+)", os.path.basename(os.path.dirname(path)))
    if m:
      found.setdefault(m.group(1), []).append(os.path.dirname(path))
  return {k: found[k] for k in LOSS_ORDER if k in found}


def _read_json(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def _ms(values, scale: float = 100.0, digits: int = 1) -> str:
  """'mean ± std' (sample std, ddof 1) of `values * scale`; just the mean for one value."""
  v = np.asarray(values, np.float64) * scale
  if v.size == 1:
    return f"{v[0]:.{digits}f}"
  return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def _diff(d, sign: int) -> str:
  """'mean ± std [wins/n]' of paired differences; a win is `sign * d > 0`."""
  wins = sum(sign * x > 0 for x in d)
  return f"{_ms(d)} [{wins}/{len(d)}]"


def _times(root: str) -> list[str]:
  """Training time per loss from ROOT/times.tsv (loss, seed, steps, wall, user, sys, load)."""
  path = os.path.join(root, "times.tsv")
  if not os.path.exists(path):
    return []
  per: dict[str, list[tuple[float, float, float]]] = {}
  with open(path) as f:
    for line in f:
      loss, _, _, wall, user, sys_s, load = line.rstrip("\n").split("\t")
      cpu = float(user) + float(sys_s)
      per.setdefault(loss, []).append((float(wall), cpu, float(load.split()[0])))
  lines = [
    "\n### Whole training runs (300 steps + compile + final eval): seconds per run\n",
    "| training loss | runs | wall s | CPU s (user+sys) | 1-min load at the end |",
    "|---|---|---|---|---|",
  ]
  for loss in LOSS_ORDER:
    if loss in per:
      v = np.asarray(per[loss])
      lines.append(
        f"| {loss} | {len(v)} | {_ms(v[:, 0], 1.0, 0)} | {_ms(v[:, 1], 1.0, 0)} "
        f"| {v[:, 2].min():.1f}–{v[:, 2].max():.1f} |"
      )
  return lines


def table(root: str) -> str:
  """Markdown tables (mean ± std over seeds) of every ROOT/<loss>_s<seed> workdir."""
  rows = {}
  for loss, wds in _runs(root).items():
    inf = [_read_json(os.path.join(w, "otclip_infer.json")) for w in wds]
    summ = [_read_json(os.path.join(w, "summary.json")) for w in wds]
    seeds = [int(w.rsplit("_s", 1)[1]) for w in wds]
    rows[loss] = (inf, summ, seeds)
  ret = "shapes_test/retrieval/{}_retrieval_recall_identical@1"
  lines = [
    "### Zero-shot top-1 (%) on 1000 test images, argmax vs FGW inference; retrieval R@1 (%)\n",
    "| training loss | seeds | 1/ε (final logit_scale) | colour+shape argmax | colour+shape FGW "
    "| position argmax | position FGW | image R@1 (text query) | text R@1 (image query) |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for loss, (inf, summ, seeds) in rows.items():
    cs = [r["colour+shape"] for r in inf]
    po = [r["position"] for r in inf]
    lines.append(
      f"| {loss} | {len(seeds)} ({','.join(map(str, seeds))}) "
      f"| {_ms([r['logit_scale'] for r in inf], 1.0)} "
      f"| {_ms([x['argmax'] for x in cs])} | {_ms([x['fgw'] for x in cs])} "
      f"| {_ms([x['argmax'] for x in po])} | {_ms([x['fgw'] for x in po])} "
      f"| {_ms([s[ret.format('image')] for s in summ])} "
      f"| {_ms([s[ret.format('text')] for s in summ])} |"
    )
  lines += [
    "\n### Paired differences on the same checkpoint (pt): mean ± std over seeds, [wins/seeds]\n",
    "Inference rule minus its baseline; for risk, negative = the OT rule is better.\n",
    "| training loss | label set | FGW − argmax | α1α2 picked | prior Sinkhorn − argmax (LT) "
    "| prior Sinkhorn − logit adj. (LT) | partial OT − MSP risk@50% "
    "| partial OT − MSP risk@80% |",
    "|---|---|---|---|---|---|---|---|",
  ]
  pairs = (
    ("fgw", "argmax", 1),
    ("lt_prior_sinkhorn", "lt_argmax", 1),
    ("lt_prior_sinkhorn", "lt_logit_adjust", 1),
    ("sel_pot_risk@0.5", "sel_msp_risk@0.5", -1),
    ("sel_pot_risk@0.8", "sel_msp_risk@0.8", -1),
  )
  pooled = {ls: [[] for _ in pairs] for ls in LABEL_SETS}
  for loss, (inf, _, _) in rows.items():
    for ls in LABEL_SETS:
      cells = []
      for j, (a, b, sign) in enumerate(pairs):
        d = [r[ls][a] - r[ls][b] for r in inf]
        pooled[ls][j] += d
        cells.append(_diff(d, sign))
      aa = ",".join(f"{r[ls]['fgw_aa']:g}" for r in inf)
      lines.append(f"| {loss} | {ls} | {cells[0]} | {aa} | " + " | ".join(cells[1:]) + " |")
  for ls in LABEL_SETS:
    cells = [_diff(d, sign) for d, (_, _, sign) in zip(pooled[ls], pairs, strict=True)]
    lines.append(f"| all runs | {ls} | {cells[0]} | | " + " | ".join(cells[1:]) + " |")
  lines += [
    "\n### Long-tailed zero-shot (imbalance 10, known prior): top-1 (%) and mean per-class "
    "recall (MPCR, %)\n",
    "| training loss | label set | n | argmax | logit adjustment (+log π) | balanced Sinkhorn "
    "| prior Sinkhorn (b = π) | argmax MPCR | prior Sinkhorn MPCR |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for loss, (inf, _, _) in rows.items():
    for ls in LABEL_SETS:
      x = [r[ls] for r in inf]
      cols = ("lt_argmax", "lt_logit_adjust", "lt_balanced_sinkhorn", "lt_prior_sinkhorn")
      cols += ("lt_argmax_mpcr", "lt_prior_mpcr")
      lines.append(
        f"| {loss} | {ls} | {x[0]['lt_n']} | "
        + " | ".join(_ms([v[k] for v in x]) for k in cols)
        + " |"
      )
  lines += [
    "\n### Selective classification: risk (error %, lower is better) at 50 % / 80 % coverage\n",
    "| training loss | label set | full-coverage error | MSP risk@50% | partial OT risk@50% "
    "| MSP risk@80% | partial OT risk@80% |",
    "|---|---|---|---|---|---|---|",
  ]
  for loss, (inf, _, _) in rows.items():
    for ls in LABEL_SETS:
      x = [r[ls] for r in inf]
      cols = ("sel_msp_risk@1", "sel_msp_risk@0.5", "sel_pot_risk@0.5", "sel_msp_risk@0.8")
      cols += ("sel_pot_risk@0.8",)
      lines.append(f"| {loss} | {ls} | " + " | ".join(_ms([v[k] for v in x]) for k in cols) + " |")
  return "\n".join(lines + _times(root))


def bench(batch: int, reps: int = 20) -> dict[str, dict[str, float]]:
  """Times a jitted value_and_grad of each loss w.r.t. [batch, 64] embeddings and 1/ε.

  Returns:
    {loss: {"wall_ms": median wall ms per call, "cpu_ms": process CPU ms per call}}.
  """
  k1, k2 = jax.random.split(jax.random.key(0))
  zi = jax.random.normal(k1, (batch, 64))
  zi = zi / jnp.linalg.norm(zi, axis=1, keepdims=True)
  zt = zi + 0.5 * jax.random.normal(k2, (batch, 64))
  zt = zt / jnp.linalg.norm(zt, axis=1, keepdims=True)
  fns = {"infonce": lambda a, b, s: losses.clip_loss(a, b, s)[0]}
  for kind, kw in BENCH_VARIANTS.items():
    fns[kind] = lambda a, b, s, kind=kind, kw=kw: otclip.ot_clip_loss(
      a, b, 1.0 / s, kind=kind, num_iters=5, **kw
    )[0]
  out = {}
  for name, f in fns.items():
    g = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))
    scale = jnp.float32(15.0)
    jax.block_until_ready(g(zi, zt, scale))
    ts, c0 = [], time.process_time()
    for _ in range(reps):
      t0 = time.perf_counter()
      jax.block_until_ready(g(zi, zt, scale))
      ts.append(time.perf_counter() - t0)
    cpu_ms = (time.process_time() - c0) / reps * 1e3
    out[name] = {"wall_ms": float(np.median(ts) * 1e3), "cpu_ms": cpu_ms}
  return out


def stepbench(batch: int, reps: int = 20) -> dict[str, dict[str, float]]:
  """Whole training step of the `small` config per loss at `batch`: median wall ms, CPU ms/step.

  Same model, optimizer, data batch and jitted `train_step` as the trainer (one device).
  """
  import functools

  from clipjax import methods
  from clipjax.train import data_setup, loop, optim
  from clipjax.train.state import TrainState
  from clipjax.train.step import train_step

  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from configs import otclip as otclip_config

  out = {}
  for loss in LOSS_ORDER:
    c = otclip_config.get_config(f"loss={loss},small,steps=300")
    c.data.batch_size = batch
    model = loop.build_model(c, jax.random.key(0))
    method = methods.get(c.method.name, **c.method.kwargs)
    tx = optim.make_optimizer(c.optim, model.params, c.total_steps)
    it = data_setup.train_iterator(c, 0, 1)
    data = jax.tree.map(jnp.asarray, data_setup.model_inputs(next(it)))
    it.close()
    state = TrainState(
      step=jnp.zeros((), jnp.int32),
      params=model.params,
      opt_state=tx.init(model.params),
      method_state=method.init(model.config.embed_dim),
      rng=jax.random.PRNGKey(1),
    )
    fn = jax.jit(
      functools.partial(
        train_step,
        model=model,
        method=method,
        tx=tx,
        schedule=optim.make_schedule(c.optim, c.total_steps),
      )
    )
    jax.block_until_ready(fn(state, data))
    ts, c0 = [], time.process_time()
    for _ in range(reps):
      t0 = time.perf_counter()
      jax.block_until_ready(fn(state, data))
      ts.append(time.perf_counter() - t0)
    cpu_ms = (time.process_time() - c0) / reps * 1e3
    out[loss] = {"wall_ms": float(np.median(ts) * 1e3), "cpu_ms": cpu_ms}
  base = out["infonce"]
  for r in out.values():
    r["wall_overhead"] = r["wall_ms"] / base["wall_ms"]
    r["cpu_overhead"] = r["cpu_ms"] / base["cpu_ms"]
  return out


def main(argv: list[str]) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  sub = p.add_subparsers(dest="cmd", required=True)
  sub.add_parser("infer").add_argument("workdirs", nargs="+")
  sub.add_parser("table").add_argument("root")
  sub.add_parser("bench").add_argument("batch", nargs="+", type=int)
  sub.add_parser("stepbench").add_argument("batch", nargs="+", type=int)
  a = p.parse_args(argv)
  if a.cmd == "infer":
    for w in a.workdirs:
      print(json.dumps(infer(w)), flush=True)
  elif a.cmd == "table":
    print(table(a.root))
  else:
    fn, key = (bench, "loss_grad_ms") if a.cmd == "bench" else (stepbench, "train_step")
    for b in a.batch:
      print(json.dumps({"batch": b, "backend": jax.default_backend(), key: fn(b)}), flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
