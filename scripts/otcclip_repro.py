"""OTCCLIP small-scale reproduction driver: train runs of configs/otcclip.py, score, tabulate.

Every run trains through the CLI (`python -m clipjax.main`, one subprocess, wall time and exit
code recorded) into ``OUT/<name>/`` and is then scored from its workdir with the public API:

* attack success rate: poison runs (`attack=poison`): zero-shot `colour+shape` accuracy on the
  target images labelled with their adversarial class (`TargetedPoisoning.asr_source()`), plus
  `target_true` (the same images classified as their true class); backdoor runs
  (`attack=backdoor`): zero-shot accuracy on the test split minus the target class, every image
  triggered and labelled with the target class (`Backdoor.triggered_source(...)`), plus
  `asr_no_trigger` (the same images *without* the trigger predicted as the target class: the
  base rate the trigger is compared with);
* clean zero-shot accuracy and retrieval: the trainer's final evaluation (`summary.json`);
* linear probe (`--probe`): logistic regression on frozen image features of clean training
  images, tested on the clean test split (`clipjax.evaluation.linear_probe`);
* cost: CPU seconds (user + system) and wall seconds of the training subprocess, median logged
  steps/s (wall clock: depends on the machine's load).

Runs are sequential; a run whose ``score.json`` exists is skipped, and a trained but unscored one
is only scored (so a driver can be resumed).
Run CPU-heavy work under ``nice -n 19``. Usage::

  python scripts/otcclip_repro.py train --out /tmp/otcclip --probe \\
      clip_bd_s0=method=clip,attack=backdoor,seed=0,poison_seed=0 ...
  python scripts/otcclip_repro.py score /tmp/otcclip/clip_bd_s0 --probe [--name clip_bd_s0]
  python scripts/otcclip_repro.py table /tmp/otcclip [/tmp/otcrepro ...]

Each ``name=args`` run uses ``BASE`` plus ``args`` (later keys win) as the config argument. The
table groups runs by name minus the trailing ``_s<seed>`` and gives mean ± std (ddof 1) per group.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

BASE = "steps=300,batch=64,train_size=5000,image_size=32,width=64,layers=2,bank_size=512"
CONFIG = pathlib.Path(__file__).resolve().parent.parent / "configs" / "otcclip.py"
LABEL_SET = "colour+shape"
PROBE_TRAIN = 2000
PROBE_L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)
ENCODE_BATCH = 256


def _merge_args(base: str, extra: str) -> str:
  kv: dict[str, str] = {}
  for item in f"{base},{extra}".split(","):
    if item.strip():
      k, _, v = item.partition("=")
      kv[k.strip()] = v.strip()
  return ",".join(f"{k}={v}" if v else k for k, v in kv.items())


def train(out: pathlib.Path, name: str, args: str, timeout_s: int) -> dict:
  """Trains one run into ``out/name`` (CLI subprocess).

  Returns its config argument, exit code, wall seconds and CPU seconds (user + system, all
  threads: the cost measure that does not depend on how loaded the shared machine is).
  """
  wd = out / name
  cmd = [
    sys.executable,
    "-m",
    "clipjax.main",
    "--config",
    f"{CONFIG}:{_merge_args(BASE, args)}",
    "--workdir",
    str(wd),
  ]
  env = dict(os.environ)
  env.setdefault("JAX_COMPILATION_CACHE_DIR", str(out / "jax_cache"))  # seeds share programs
  t0, r0 = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
  with open(out / f"{name}.log", "w") as log:
    log.write(" ".join(cmd) + "\n")
    log.flush()
    try:
      rc = subprocess.run(
        cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s, env=env
      ).returncode
    except subprocess.TimeoutExpired:
      rc = 124
  r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
  cpu_s = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
  return {
    "config_arg": cmd[4],
    "rc": rc,
    "wall_s": round(time.time() - t0, 1),
    "cpu_s": round(cpu_s, 1),
  }


def _encode_images(model, images_nhwc: np.ndarray) -> np.ndarray:
  outs = []
  for i in range(0, len(images_nhwc), ENCODE_BATCH):
    x = images_nhwc[i : i + ENCODE_BATCH].astype(np.float32) / 255.0
    outs.append(np.asarray(model.encode_image(model.params, x).emb))
  return np.concatenate(outs, 0)


def _images_labels(source, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  n = len(source) if n is None else min(n, len(source))
  exs = [source[i] for i in range(n)]
  return np.stack([e["image"] for e in exs]), np.array([e["labels"][LABEL_SET] for e in exs])


def score(wd: pathlib.Path, probe: bool) -> dict:
  """ASR, clean metrics, speed (and linear probe) of a trained workdir of configs/otcclip.py."""
  from clipjax import runs
  from clipjax.data import registry
  from clipjax.data.tokenizer import Tokenizer
  from clipjax.evaluation import zeroshot
  from clipjax.evaluation.linear_probe import linear_probe

  cfg = runs.read_run_config(str(wd))
  model = runs.load_model(str(wd))
  size, length = cfg["data"]["image_size"], cfg["data"]["context_length"]
  train_spec = cfg["data"]["train"]
  src = registry.build_source(train_spec, size)
  test_spec = dict(cfg["eval"]["datasets"]["shapes_test"])
  test = registry.build_source(test_spec, size)
  ls = test.label_sets[LABEL_SET]
  clf = zeroshot.build_classifier(
    lambda ids: np.asarray(model.encode_text(model.params, ids).emb),
    Tokenizer(context_length=length),
    ls.classnames,
    ls.templates,
  )

  def predict(images_nhwc: np.ndarray) -> np.ndarray:
    return zeroshot.zeroshot_scores(_encode_images(model, images_nhwc), clf).argmax(1)

  kind = train_spec["corrupt"]["kind"]
  out: dict = {"attack": kind}
  if kind == "poison":
    asr_src = src.asr_source()
    pred = predict(np.stack([asr_src[i]["image"] for i in range(len(asr_src))]))
    targets = src.poison_targets
    out["asr"] = float(np.mean(pred == [t["target_label"] for t in targets]))
    out["target_true"] = float(np.mean(pred == [t["true_label"] for t in targets]))
    out["asr_n"] = len(targets)
  elif kind == "backdoor":
    trig = src.triggered_source(test)
    imgs_trig, _ = _images_labels(trig)
    plain = np.stack([test[trig[i]["source_index"]]["image"] for i in range(len(trig))])
    out["asr"] = float(np.mean(predict(imgs_trig) == src.target_class))
    out["asr_no_trigger"] = float(np.mean(predict(plain) == src.target_class))
    out["asr_n"] = len(trig)
  else:
    raise ValueError(f"{wd}: training data corruption {kind!r} is not poison/backdoor")
  summ = json.loads((wd / "summary.json").read_text())
  for key, name in (
    (f"shapes_test/zeroshot/{LABEL_SET}/acc1", "zs_colour+shape"),
    ("shapes_test/zeroshot/shape/acc1", "zs_shape"),
    ("shapes_test/zeroshot/colour/acc1", "zs_colour"),
    ("shapes_test/retrieval/text_retrieval_recall_identical@1", "i2t_R@1"),
  ):
    out[name] = summ[key]
  rows = [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines() if x.strip()]
  sps = [r["steps_per_s"] for r in rows if r.get("kind") == "train" and "steps_per_s" in r]
  out["steps_per_s_median"] = float(statistics.median(sps[1:] or sps)) if sps else float("nan")
  active = [r for r in rows if r.get("kind") == "train" and r.get("remat/active", 0) > 0]
  for k in ("remat/acc_clean", "remat/poison_keep", "remat/clean_to_poison", "remat/changed"):
    vals = [
      r[k]
      for r in active
      if k in r and (not k.startswith("remat/poison") or r.get("remat/n_poisoned", 0) > 0)
    ]
    if vals:
      out[k.split("/")[1]] = float(np.mean(vals))
  if probe:
    train_src = registry.build_source({"name": "synthetic", "split": "train", "seed": 0}, size)
    x_tr, y_tr = _images_labels(train_src, PROBE_TRAIN)
    x_te, y_te = _images_labels(test, cfg["eval"]["max_examples"])
    res = linear_probe(
      (_encode_images(model, x_tr), y_tr),
      (_encode_images(model, x_te), y_te),
      num_classes=len(ls.classnames),
      l2_grid=PROBE_L2_GRID,
    )
    out["probe_colour+shape"] = float(res["acc1"])
    out["probe_l2"] = float(res["best_l2"])
  return out


def _cmd_train(a: argparse.Namespace) -> None:
  out = pathlib.Path(a.out)
  out.mkdir(parents=True, exist_ok=True)
  for spec in a.runs:
    name, sep, args = spec.partition("=")
    if not sep or not name:
      raise SystemExit(f"run spec {spec!r} must be name=config_args")
    if (out / name / "score.json").exists():
      print(f"{name}: scored already, skipped", flush=True)
      continue
    info_path = out / f"{name}.train.json"
    if (out / name / "summary.json").exists() and info_path.exists():
      info = json.loads(info_path.read_text())
    else:
      print(f"{time.strftime('%H:%M:%S')} {name}: training ({args})", flush=True)
      info = train(out, name, args, a.timeout)
      info_path.write_text(json.dumps(info))
    print(f"{time.strftime('%H:%M:%S')} {name}: rc={info['rc']} wall={info['wall_s']}s", flush=True)
    if info["rc"] != 0:
      continue
    t0 = time.time()
    res = {"name": name, **info, **score(out / name, a.probe)}
    res["score_s"] = round(time.time() - t0, 1)
    res["loadavg_1m_end"] = os.getloadavg()[0]
    (out / name / "score.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res), flush=True)


def _fmt(vals: list[float], digits: int = 3) -> str:
  if len(vals) == 1:
    return f"{vals[0]:.{digits}f}"
  return f"{np.mean(vals):.{digits}f} ± {np.std(vals, ddof=1):.{digits}f}"


DIGITS = {"steps_per_s_median": 2, "wall_s": 0, "cpu_s": 0}


def _cmd_table(a: argparse.Namespace) -> None:
  scores = []
  for d in a.dirs:
    scores += [json.loads(p.read_text()) for p in sorted(pathlib.Path(d).glob("*/score.json"))]
  scores = sorted((s for s in scores if s["name"].startswith(a.prefix)), key=lambda s: s["name"])
  cols = [
    "asr",
    "asr_no_trigger",
    "target_true",
    "zs_colour+shape",
    "zs_shape",
    "zs_colour",
    "i2t_R@1",
    "probe_colour+shape",
    "poison_keep",
    "clean_to_poison",
    "steps_per_s_median",
    "wall_s",
    "cpu_s",
  ]
  if a.cols:
    unknown = sorted(set(a.cols.split(",")) - set(cols))
    if unknown:
      raise SystemExit(f"--cols: unknown columns {unknown}; known: {cols}")
    cols = a.cols.split(",")
  print("| run | " + " | ".join(cols) + " |")
  print("|---" * (len(cols) + 1) + "|")
  groups: dict[str, list[dict]] = {}
  for s in scores:
    print(
      f"| {s['name']} | "
      + " | ".join(_fmt([s[c]], DIGITS.get(c, 3)) if c in s else "" for c in cols)
      + " |"
    )
    groups.setdefault(re.sub(r"_s\d+$", "", s["name"]), []).append(s)
  print("\n| group (n) | " + " | ".join(cols) + " |")
  print("|---" * (len(cols) + 1) + "|")
  for g, ss in groups.items():
    cells = [
      _fmt([s[c] for s in ss], DIGITS.get(c, 3)) if all(c in s for s in ss) else "" for c in cols
    ]
    print(f"| {g} ({len(ss)}) | " + " | ".join(cells) + " |")


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sub = p.add_subparsers(dest="cmd", required=True)
  t = sub.add_parser("train", help="train and score runs sequentially")
  t.add_argument("--out", required=True)
  t.add_argument("--probe", action="store_true", help="also fit a linear probe")
  t.add_argument("--timeout", type=int, default=600, help="wall seconds per training run")
  t.add_argument("runs", nargs="+", help="name=config_args (added to BASE)")
  s = sub.add_parser("score", help="score one trained workdir (prints JSON)")
  s.add_argument("workdir")
  s.add_argument("--probe", action="store_true")
  s.add_argument("--name", help="also write score.json into the workdir under this run name")
  tb = sub.add_parser("table", help="markdown table of score.json files, mean ± std per group")
  tb.add_argument("dirs", nargs="+")
  tb.add_argument("--cols", help="comma-separated subset of the columns")
  tb.add_argument("--prefix", default="", help="only runs whose name starts with this")
  a = p.parse_args()
  if a.cmd == "train":
    _cmd_train(a)
  elif a.cmd == "score":
    res = score(pathlib.Path(a.workdir), a.probe)
    if a.name:
      res = {"name": a.name, **res}
      (pathlib.Path(a.workdir) / "score.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
  else:
    _cmd_table(a)


if __name__ == "__main__":
  main()
