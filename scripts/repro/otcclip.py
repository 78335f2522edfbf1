"""OTCCLIP (arXiv 2509.18717, EMNLP 2025): pre-training on poisoned / backdoored pairs.

Grid (trained from scratch: no base; the same seed gives the same init, batches and poisoned set,
so runs with one seed are paired), all `configs/otcclip.py:<SIZE>,...,seed=<s>,poison_seed=<s>`:

* main: plain CLIP, RoCLIP (published: `enqueue=matching`, `cross_aug`), SafeCLIP and OTCCLIP
  (α = 0.5) × the backdoor (p = 0.05, checkerboard trigger, target class 0) and targeted-poisoning
  attacks × `SEEDS` seeds;
* attribution (backdoor, `ABLATION_SEEDS` seeds): OTCCLIP's
  `ABLATIONS` variants (`configs/otcclip.py` `variant=`): global-cosine re-matching with the same
  losses, OT and global-cosine re-matching without the inter/intra terms, no re-matching (both
  terms, and each term alone), and the collapsing intra form;
* lower poison rates: the backdoor at p = 0.01 and 0.02 (`LOW_RATES`) for every main method ×
  `SEEDS` seeds, beside the main grid's 0.05;
* matching accuracy: OTCCLIP with the backdoor on `world=distinct` (captions name a second
  object, so "the image's own caption" is more than "a caption of its class"), logging per
  re-matching step how often OT re-ranking and the global-cosine nearest neighbour pick the
  image's own caption and an equivalent one (same colour+shape, size and position).

After each run `score` measures, from the workdir:

* ASR: poisoning: the target images classified (zero-shot `colour+shape`) as their adversarial
  class (`TargetedPoisoning.asr_source()`), plus `target_true`; backdoor: the test images not of
  the target class, trigger pasted, classified as the target class (`Backdoor.triggered_source`),
  plus `asr_no_trigger` (the same images without the trigger: the base rate);
* a linear probe (`clipjax.evaluation.linear_probe`) on frozen image features of clean training
  images, tested on the clean test split;
* the re-matching diagnostics logged during training (means over the active steps).

Clean zero-shot and retrieval come from the trainer's final evaluation (`summary.json`).
"""

from __future__ import annotations

import statistics

import numpy as np

from repro.grid import Claim, Column, Run, Table, read_json, train_events

SEEDS = 3
ABLATION_SEEDS = 3
BASES = 0  # trained from scratch
SIZE = "steps=300,batch=64,train_size=5000,image_size=32,width=64,layers=2,bank_size=512"
ATTACKS = {
  "backdoor": "attack=backdoor,bd_fraction=0.05,bd_target=0,patch_fraction=0.125",
  "poison": "attack=poison",
}
METHODS = {
  "clip": "method=clip",
  "roclip": "method=roclip",
  "safeclip": "method=safeclip",
  "otcclip": "method=otcclip,match_alpha=0.5",
}
ABLATIONS = (
  "global_match",
  "match_only",
  "global_match_only",
  "no_match",
  "inter_only",
  "intra_only",
  "intra_distance",
)
# Lower backdoor rates (the paper's 1 % and 2 % beside the main grid's 5 %): group
# `backdoor_<pct>pct/<method>`, every method, `SEEDS` seeds.
LOW_RATES = (0.01, 0.02)


def _backdoor_at(rate: float) -> str:
  return ATTACKS["backdoor"].replace("bd_fraction=0.05", f"bd_fraction={rate}")


def _rate_group(rate: float, method: str) -> str:
  return f"backdoor_{round(100 * rate)}pct/{method}"


MATCHING_WORLD = "distinct"
LABEL_SET = "colour+shape"
FULL_EVAL = {"probe_train": 2000}
QUICK_EVAL = {"probe_train": 128}
PROBE_L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)
ENCODE_BATCH = 256
_SUMMARY = {
  f"shapes_test/zeroshot/{LABEL_SET}/acc1": "zs_colour+shape",
  "shapes_test/zeroshot/shape/acc1": "zs_shape",
  "shapes_test/zeroshot/colour/acc1": "zs_colour",
  "shapes_test/retrieval/text_retrieval_recall_identical@1": "i2t_R@1",
}
_REMAT = (
  "acc_clean",
  "acc_equiv",
  "acc_clean_global",
  "acc_equiv_global",
  "poison_keep",
  "clean_to_poison",
  "changed",
)


def grid(quick: bool, seeds: int, bases: int) -> list[Run]:
  del bases
  size = "smoke" if quick else SIZE
  eval_args = QUICK_EVAL if quick else FULL_EVAL

  def run(name, group, args, s):
    return Run(
      name=name,
      config=f"configs/otcclip.py:{size},{args},seed={s},poison_seed={s}",
      group=group,
      seed=s,
      evaluate="score",
      eval_args=eval_args,
    )

  out = [
    run(f"{attack}_{m}_s{s}", f"{attack}/{m}", f"{margs},{aargs}", s)
    for attack, aargs in ATTACKS.items()
    for s in range(seeds)
    for m, margs in METHODS.items()
  ]
  otc, backdoor = METHODS["otcclip"], ATTACKS["backdoor"]
  out += [
    run(f"backdoor_{v}_s{s}", f"backdoor/{v}", f"{otc},variant={v},{backdoor}", s)
    for s in range(min(seeds, ABLATION_SEEDS))
    for v in ABLATIONS
  ]
  out += [
    run(
      f"{_rate_group(r, m).replace('/', '_')}_s{s}",
      _rate_group(r, m),
      f"{margs},{_backdoor_at(r)}",
      s,
    )
    for r in LOW_RATES
    for s in range(seeds)
    for m, margs in METHODS.items()
  ]
  out += [
    run(f"matching_s{s}", "matching", f"{otc},world={MATCHING_WORLD},{backdoor}", s)
    for s in range(min(seeds, ABLATION_SEEDS))
  ]
  return out


def _encode_images(model, images_nhwc):
  outs = []
  for i in range(0, len(images_nhwc), ENCODE_BATCH):
    x = images_nhwc[i : i + ENCODE_BATCH].astype(np.float32) / 255.0
    outs.append(np.asarray(model.encode_image(model.params, x).emb))
  return np.concatenate(outs, 0)


def _images_labels(source, n: int | None = None):
  n = len(source) if n is None else min(n, len(source))
  exs = [source[i] for i in range(n)]
  return np.stack([e["image"] for e in exs]), np.array([e["labels"][LABEL_SET] for e in exs])


def score(workdir: str, probe_train: int) -> dict:
  """ASR (with its base rate) and linear-probe accuracy of a trained configs/otcclip.py workdir."""
  from clipjax import model as model_lib
  from clipjax import runs
  from clipjax.data import registry
  from clipjax.data.tokenizer import Tokenizer
  from clipjax.evaluation import zeroshot
  from clipjax.evaluation.linear_probe import linear_probe

  cfg = runs.read_run_config(workdir)
  model = model_lib.load(workdir)
  size, length = cfg["data"]["image_size"], cfg["data"]["context_length"]
  train_spec = cfg["data"]["train"]
  src = registry.build_source(train_spec, size)
  test = registry.build_source(dict(cfg["eval"]["datasets"]["shapes_test"]), size)
  ls = test.label_sets[LABEL_SET]
  clf = zeroshot.build_classifier(
    lambda ids: np.asarray(model.encode_text(model.params, ids).emb),
    Tokenizer(context_length=length),
    ls.classnames,
    ls.templates,
  )

  def predict(images_nhwc):
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
    raise ValueError(f"{workdir}: training data corruption {kind!r} is not poison/backdoor")
  train_src = registry.build_source({"name": "synthetic", "split": "train", "seed": 0}, size)
  x_tr, y_tr = _images_labels(train_src, probe_train)
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


def metrics(run: Run, workdir: str) -> dict[str, float]:
  summary = read_json(workdir, "summary.json")
  scored = read_json(workdir, "repro_score.json")
  out = {k: float(v) for k, v in scored.items() if k != "attack"}
  out.update({name: float(summary[key]) for key, name in _SUMMARY.items()})
  rows = train_events(workdir)
  sps = [r["steps_per_s"] for r in rows if "steps_per_s" in r]
  if sps:
    out["steps_per_s_median"] = float(statistics.median(sps[1:] or sps))
  active = [r for r in rows if r.get("remat/active", 0) > 0]
  for k in _REMAT:
    vals = [
      r[f"remat/{k}"]
      for r in active
      if f"remat/{k}" in r and (not k.startswith("poison") or r.get("remat/n_poisoned", 0) > 0)
    ]
    if vals:
      out[k] = float(np.mean(vals))
  for k in ("img", "txt"):  # collapse check: the last logged step's token diversity
    logged = [r[f"tokens/diversity_{k}"] for r in rows if f"tokens/diversity_{k}" in r]
    if logged:
      out[f"diversity_{k}"] = float(logged[-1])
  return out


_COLS = (
  Column("zs_colour+shape", "ZS colour+shape"),
  Column("zs_shape", "ZS shape"),
  Column("zs_colour", "ZS colour"),
  Column("i2t_R@1", "image→text R@1"),
  Column("probe_colour+shape", "linear probe colour+shape"),
  Column("poison_keep", "poison keep"),
  Column("clean_to_poison", "clean → poison"),
  Column("acc_clean", "re-match own caption"),
)
TABLES = (
  Table(
    "Backdoor (p = 0.05, patch trigger → class 0): attack success rate and clean metrics (%)",
    (Column("asr", "ASR"), Column("asr_no_trigger", "no-trigger base rate"), *_COLS),
    tuple(f"backdoor/{m}" for m in METHODS),
  ),
  Table(
    "Targeted poisoning (8 target images × 50 poisoned captions): ASR and clean metrics (%)",
    (Column("asr", "ASR"), Column("target_true", "target → true class"), *_COLS),
    tuple(f"poison/{m}" for m in METHODS),
  ),
  *(
    Table(
      f"Backdoor at p = {r:g} (patch trigger → class 0): attack success rate and clean metrics (%)",
      (Column("asr", "ASR"), Column("asr_no_trigger", "no-trigger base rate"), *_COLS),
      tuple(_rate_group(r, m) for m in METHODS),
    )
    for r in LOW_RATES
  ),
  Table(
    f"Attribution (backdoor p = 0.05, {ABLATION_SEEDS} seeds): OTCCLIP and its ablations (%)",
    (
      Column("asr", "ASR"),
      Column("zs_colour+shape", "ZS colour+shape"),
      Column("i2t_R@1", "image→text R@1"),
      Column("probe_colour+shape", "linear probe colour+shape"),
      Column("poison_keep", "poison keep"),
      Column("changed", "captions changed"),
      Column("diversity_img", "token diversity (image)", scale=1.0, digits=3),
      Column("diversity_txt", "token diversity (text)", scale=1.0, digits=3),
    ),
    ("backdoor/otcclip", "backdoor/roclip", *(f"backdoor/{v}" for v in ABLATIONS)),
    note="global_match: global-cosine re-matching, same pool and losses; match_only: OT "
    "re-matching, no inter/intra terms; global_match_only: global-cosine re-matching, no "
    "inter/intra terms; no_match: inter + intra terms, no re-matching; inter_only / intra_only: "
    "one term, no re-matching; intra_distance: the collapsing intra form. Token diversity: "
    "mean pairwise (1 − cosine) between an item's tokens at the last logged step "
    "(0 = collapsed).",
  ),
  Table(
    f"Matching accuracy on world={MATCHING_WORLD} (OTCCLIP, backdoor): how often re-matching "
    "returns each clean image's own caption / an equivalent one, mean over re-matching steps (%)",
    (
      Column("acc_clean", "OT: own caption"),
      Column("acc_equiv", "OT: equivalent caption"),
      Column("acc_clean_global", "global cosine: own caption"),
      Column("acc_equiv_global", "global cosine: equivalent caption"),
      Column("changed", "captions changed"),
    ),
    ("matching", "backdoor/otcclip"),
    note="backdoor/otcclip is the same method on the default world, where captions name only "
    "class, size and position (many images share each caption).",
  ),
)

_PAPER_ASR = "ASR → 0 % in most cases (COCO / Visual Genome); no per-setting number recoverable"
CLAIMS = (
  *(
    Claim(
      f"{attack}: OTCCLIP < {base}",
      f"OTCCLIP lowers the {attack} ASR below {base}",
      "asr",
      "asr",
      (f"{attack}/otcclip",),
      f"{attack}/{base}",
      -1,
      _PAPER_ASR,
    )
    for attack in ATTACKS
    for base in ("clip", "roclip", "safeclip")
  ),
  *(
    Claim(
      f"{attack}: clean zero-shot",
      "OTCCLIP has higher clean zero-shot accuracy than RoCLIP on poisoned data",
      "zs_colour+shape",
      "zs_colour+shape",
      (f"{attack}/otcclip",),
      f"{attack}/roclip",
      1,
    )
    for attack in ATTACKS
  ),
  *(
    Claim(
      f"{attack}: linear probe",
      "OTCCLIP has higher linear-probe accuracy than RoCLIP on poisoned data",
      "probe_colour+shape",
      "probe_colour+shape",
      (f"{attack}/otcclip",),
      f"{attack}/roclip",
      1,
    )
    for attack in ATTACKS
  ),
  *(
    Claim(
      f"backdoor {round(100 * r)} %: OTCCLIP < {base}",
      f"OTCCLIP lowers the backdoor ASR below {base} at poison rate {r:g}",
      "asr",
      "asr",
      (_rate_group(r, "otcclip"),),
      _rate_group(r, base),
      -1,
      _PAPER_ASR,
    )
    for r in LOW_RATES
    for base in ("clip", "roclip", "safeclip")
  ),
  Claim(
    "OT > global re-matching (ASR)",
    "fine-grained OT re-matching, not re-matching per se, lowers the backdoor ASR",
    "asr",
    "asr",
    ("backdoor/otcclip",),
    "backdoor/global_match",
    -1,
  ),
  Claim(
    "OT > global re-matching, no terms (ASR)",
    "the same comparison without the inter/intra terms: re-matching alone, OT vs global cosine",
    "asr",
    "asr",
    ("backdoor/match_only",),
    "backdoor/global_match_only",
    -1,
  ),
  Claim(
    "OT finds the own caption",
    "OT re-ranking returns an image's own caption more often than global cosine",
    "acc_clean",
    "acc_clean_global",
    ("matching",),
    None,
    1,
  ),
)
