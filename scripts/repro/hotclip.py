"""HOT-CLIP (ICLR 2026 submission): an attacks × templates grid of TeCoA submodels, then OT fusion.

Grid, per base b (the shipped `assets/bases/base_s{b}`, `repro.bases`) and seed s:

* the |A| × |T| submodels `configs/hotclip_submodel.py:attack=<a>,prompt=<t>,init=<base>`
  (`SUB_STEPS` steps at lr `SUB_LR`, seed 100·s + t);
* `hot_b{b}_s{s}_fused`: `hotclip_fuse` at its defaults (Sinkhorn τ = 0.08 on the cost as
  written, per-head maps, residual-stream and LayerNorm alignment: the shipped bases load with
  learned positions, so `residual="auto"` is "mean") with Algorithm 1's intra-attack TeCoA and
  inter-attack FARE fine-tunes on (`INTRA_STEPS`, `INTER_STEPS`); it evaluates the base, the
  hierarchical fusion (Algorithm 1), direct OT, average, output ensemble and every submodel
  (clean and PGD-10 / APGD-CE-10 at 2 and 4/255 on 500 test images, shape label set);
* `hot_b{b}_s{s}_noft`: the same hierarchical fusion without the fine-tunes (what Algorithm 1's
  alignment alone gives, comparable to direct OT and average, which get no fine-tune);
* `hot_b{b}_s{s}_exact`: hierarchical and direct OT fusion with exact assignment (hard maps), no
  fine-tunes: what alignment gives without the entropic blur;
* the different-initialisation control (OTFusion's premise): two image towers drawn fresh from
  seeds 1 + 2s and 2 + 2s and trained `CONTROL_STEPS` steps against base b's frozen text tower
  (`configs/base.py:init=<base>,fresh_image_tower=True`), fused by direct OT and by averaging
  (`ctrl_b{b}_s{s}_fused`, PGD-10 at 2/255 only), and by direct OT aligned on the towers'
  activations on 64 training images instead of their weights (`ctrl_b{b}_s{s}_acts`); then the
  OT-fused and the averaged model each fine-tune their image tower for `CONTROL_FT_STEPS` steps
  (`ctrl_b{b}_s{s}_ft_{ot,avg}`, evaluated on the 1000 test images like the towers): does
  alignment give the fine-tune a better start?

The controls come first in the grid (they are cheaper), then the fusion grids base by base.
"""

from __future__ import annotations

import numpy as np

from repro import bases as bases_lib
from repro.grid import Claim, Column, Run, Table, events, read_json

SEEDS = 1
BASES = 3
ATTACKS = ("fgsm", "pgd", "mim")
PROMPTS = 3
SUB_STEPS = 100
SUB_LR = 3e-4
INTRA_STEPS = 30
INTER_STEPS = 30
CONTROL_STEPS = 400
CONTROL_FT_STEPS = 100  # image-tower fine-tune of the control's fused models
QUICK_ATTACKS = ("fgsm", "pgd")
QUICK_PROMPTS = 2
FUSED = ("hierarchical", "direct_ot", "average", "ensemble")
MODELS = ("base", *FUSED, "sub_mean", "sub_best")
CONTROL_MODELS = ("sub_mean", "direct_ot", "average", "ensemble")
ATTACK_LABELS = ("pgd@2/255", "pgd@4/255", "apgd-ce@2/255", "apgd-ce@4/255")


def _steps(n: int) -> tuple[str, ...]:
  return (
    f"--config.total_steps={n}",
    f"--config.checkpoint.every_steps={n}",
    f"--config.eval.every_steps={n}",
  )


def _control(b: int, s: int, quick: bool) -> list[Run]:
  base, deps = bases_lib.base_path(b, quick=quick), bases_lib.base_deps(b, quick=quick)
  name = bases_lib.base_name(b, quick=quick)
  stem = f"ctrl_b{b}_s{s}"
  towers = [
    Run(
      name=f"{stem}_{tag}_0",
      config=f"configs/base.py:{'smoke,' if quick else ''}init={base},fresh_image_tower=True,"
      f"seed={1 + 2 * s + i}" + ("" if quick else f",steps={CONTROL_STEPS}"),
      group=f"control_tower/{tag}",
      deps=deps,
      seed=s,
      base=name,
    )
    for i, tag in enumerate("ab")
  ]
  fuse_config = f"configs/hotclip_fuse.py:{'smoke,' if quick else ''}root={{root}}/{stem},"
  fuse_config += "attacks=a+b,prompts=1,fusions="
  fuse = Run(
    name=f"{stem}_fused",
    config=fuse_config + "direct_ot+average+ensemble,eval_attacks=light",
    group="control",
    deps=tuple(t.name for t in towers),
    seed=s,
    base=name,
  )
  acts = Run(
    name=f"{stem}_acts",
    config=fuse_config + "direct_ot,submodels=False,eval_attacks=light",
    group="control_acts",
    overrides=("--config.align.representation=acts",),
    deps=tuple(t.name for t in towers),
    seed=s,
    base=name,
  )
  fine_tunes = [
    Run(
      name=f"{stem}_ft_{tag}",
      config=f"configs/base.py:{'smoke,' if quick else ''}"
      f"init={{root}}/{stem}_fused/fused/{fusion},freeze_text=True,seed={1 + 2 * s}"
      + ("" if quick else f",steps={CONTROL_FT_STEPS}"),
      group=f"control_ft/{tag}",
      deps=(fuse.name,),
      seed=s,
      base=name,
    )
    for tag, fusion in (("ot", "direct_ot"), ("avg", "average"))
  ]
  return [*towers, fuse, acts, *fine_tunes]


def grid(quick: bool, seeds: int, bases: int) -> list[Run]:
  if bases < 1:
    raise ValueError("HOT-CLIP fine-tunes base checkpoints: --bases must be ≥ 1")
  attacks, prompts = (QUICK_ATTACKS, QUICK_PROMPTS) if quick else (ATTACKS, PROMPTS)
  out = bases_lib.base_runs(bases, quick)
  out += [r for b in range(bases) for s in range(seeds) for r in _control(b, s, quick)]
  for b in range(bases):
    base, deps = bases_lib.base_path(b, quick=quick), bases_lib.base_deps(b, quick=quick)
    name = bases_lib.base_name(b, quick=quick)
    for s in range(seeds):
      stem = f"hot_b{b}_s{s}"
      subs = [
        Run(
          name=f"{stem}_{a}_{t}",
          config=f"configs/hotclip_submodel.py:{'smoke,' if quick else ''}attack={a},prompt={t},"
          f"init={base}",
          group=f"submodel/{a}_{t}",
          overrides=(
            *(() if quick else (*_steps(SUB_STEPS), f"--config.optim.lr={SUB_LR}")),
            f"--config.seed={100 * s + t}",
          ),
          deps=deps,
          seed=s,
          base=name,
        )
        for a in attacks
        for t in range(prompts)
      ]
      out += subs
      fuse = f"configs/hotclip_fuse.py:{'smoke,' if quick else ''}root={{root}}/{stem},"
      fuse += f"attacks={'+'.join(attacks)},prompts={prompts}"
      finetunes = () if quick else (
        f"--config.finetune.intra_steps={INTRA_STEPS}",
        f"--config.finetune.inter_steps={INTER_STEPS}",
      )  # fmt: skip
      out.append(
        Run(
          name=f"{stem}_fused",
          config=fuse,
          group="fusion",
          overrides=(f"--config.base={base}", *finetunes),
          deps=tuple(r.name for r in subs),
          seed=s,
          base=name,
        )
      )
      no_finetune = ("--config.finetune.intra_steps=0", "--config.finetune.inter_steps=0")
      for suffix, fusions, extra in (
        ("noft", "hierarchical", ()),
        ("exact", "hierarchical+direct_ot", ("--config.align.solver=exact",)),
      ):
        out.append(
          Run(
            name=f"{stem}_{suffix}",
            config=f"{fuse},fusions={fusions},submodels=False",
            group=f"fusion_{suffix}",
            overrides=(*no_finetune, *extra),
            deps=tuple(r.name for r in subs),
            seed=s,
            base=name,
          )
        )
  return out


# Fusion runs and the suffix their models' keys get (one table row per model and group).
FUSION_GROUPS = {
  "fusion": "",
  "fusion_noft": "_noft",
  "fusion_exact": "_exact",
  "control": "",
  "control_acts": "_acts",
}


def metrics(run: Run, workdir: str) -> dict[str, float]:
  summary = read_json(workdir, "summary.json")
  if run.group not in FUSION_GROUPS:
    out = {k: v for k, v in summary.items() if k.endswith("/acc1") or "robust" in k}
    if run.group.startswith("control_tower/"):
      # The tower after as many steps from scratch as the fused models' fine-tune gets.
      at = [e for e in events(workdir, "eval") if e["step"] == CONTROL_FT_STEPS]
      if at:  # (a --quick tower never gets there)
        out.update({f"step{CONTROL_FT_STEPS}/{k}": v for k, v in at[-1].items() if k in out})
    return out
  out: dict[str, float] = {}
  for name, res in summary["models"].items():
    key = "sub" if name.startswith("sub[") else name + FUSION_GROUPS[run.group]
    for k, v in res.items():
      if isinstance(v, (int, float)) and not isinstance(v, bool):
        if key == "sub":
          out.setdefault(f"_sub/{k}", []).append(float(v))
        else:
          out[f"{key}/{k}"] = float(v)
  for k in [k for k in out if k.startswith("_sub/")]:
    vals = out.pop(k)
    out[f"sub_mean/{k[5:]}"] = float(np.mean(vals))
    out[f"sub_best/{k[5:]}"] = float(np.max(vals))
  out["model_param_mb"] = float(summary["model_param_mb"])
  return out


_CONTROL_LABELS = ("shape", "colour", "size", "position", "colour+shape")
_ACC = (
  Column("{row}/clean_acc", "clean"),
  *(Column(f"{{row}}/robust_acc/{lab}", lab) for lab in ATTACK_LABELS),
  Column("{row}/robust_acc_worst", "worst over attacks"),
)
_MASS = (
  Column("{row}/identity_mass_mean", "identity mass (mean)", 1.0, 3),
  Column("{row}/identity_mass_min", "identity mass (min)", 1.0, 3),
)
TABLES = (
  Table(
    "Clean and robust zero-shot accuracy (%) of the base, the fused models and the submodels "
    "(`sub_mean`: mean over the grid; `sub_best`: best submodel per column); identity mass: the "
    "mass a transport map keeps on the identity (1: no re-ordering)",
    (*_ACC, *_MASS),
    ("fusion",),
    MODELS,
  ),
  Table(
    "Hierarchical fusion without Algorithm 1's fine-tunes (alignment and averaging only)",
    (*_ACC, *_MASS),
    ("fusion_noft",),
    ("hierarchical_noft",),
  ),
  Table(
    "Hierarchical and direct OT fusion with exact assignment (hard maps) instead of Sinkhorn "
    "τ = 0.08, no fine-tunes",
    (*_ACC, *_MASS),
    ("fusion_exact",),
    ("hierarchical_exact", "direct_ot_exact"),
  ),
  Table(
    "Different-initialisation control: two image towers trained from fresh draws against the "
    "base's frozen text tower (`sub_mean`: the two towers), clean and PGD-10 at 2/255 (%)",
    (
      Column("{row}/clean_acc", "clean"),
      Column("{row}/robust_acc/pgd@2/255", "pgd@2/255"),
      *_MASS,
    ),
    ("control",),
    CONTROL_MODELS,
  ),
  Table(
    f"Control: the two towers ({CONTROL_STEPS} steps each) and the OT-fused and averaged models "
    f"after a {CONTROL_FT_STEPS}-step image-tower fine-tune; zero-shot top-1 (%) on the 1000 "
    "test images",
    (
      *(Column(f"shapes_test/zeroshot/{ls}/acc1", ls) for ls in _CONTROL_LABELS),
      Column(
        f"step{CONTROL_FT_STEPS}/shapes_test/zeroshot/shape/acc1",
        f"shape at step {CONTROL_FT_STEPS}",
      ),
    ),
    ("control_tower/a", "control_tower/b", "control_ft/ot", "control_ft/avg"),
    note=f"`shape at step {CONTROL_FT_STEPS}`: a tower after {CONTROL_FT_STEPS} steps from "
    "scratch (its evaluation at that step), the budget the fused models' fine-tune gets.",
  ),
  Table(
    "Control, direct OT fusion aligned on activations (64 training images) instead of weights",
    (
      Column("{row}/clean_acc", "clean"),
      Column("{row}/robust_acc/pgd@2/255", "pgd@2/255"),
      *_MASS,
    ),
    ("control_acts",),
    ("direct_ot_acts",),
  ),
)

_TABLE5 = "Table 5 order (hierarchical > direct OT > average); no number recoverable"
CLAIMS = (
  Claim(
    "hierarchical > average",
    "hierarchical OT fusion (Algorithm 1) is more robust than plain weight averaging",
    "hierarchical/robust_acc_worst",
    "average/robust_acc_worst",
    ("fusion",),
    None,
    1,
    _TABLE5,
  ),
  Claim(
    "hierarchical > direct OT",
    "hierarchical OT fusion (Algorithm 1) is more robust than one-level (direct) OT fusion",
    "hierarchical/robust_acc_worst",
    "direct_ot/robust_acc_worst",
    ("fusion",),
    None,
    1,
    _TABLE5,
  ),
  Claim(
    "direct OT > average",
    "one-level OT fusion is more robust than plain weight averaging",
    "direct_ot/robust_acc_worst",
    "average/robust_acc_worst",
    ("fusion",),
    None,
    1,
    _TABLE5,
  ),
  Claim(
    "alignment alone > average",
    "hierarchical fusion without the fine-tunes is more robust than plain weight averaging",
    "hierarchical_noft/robust_acc_worst",
    "average/robust_acc_worst",
    ("fusion_noft",),
    "fusion",
    1,
  ),
  Claim(
    "hard maps equal averaging",
    "with exact assignment, hierarchical fusion of same-base submodels matches plain averaging "
    "(within 1 point, worst-case robust accuracy): the right maps are the identity here",
    "hierarchical_exact/robust_acc_worst",
    "average/robust_acc_worst",
    ("fusion_exact",),
    "fusion",
    0,
    margin=0.01,
  ),
  Claim(
    "fusion > submodels",
    "the fused model (Algorithm 1) is more robust across attacks than the average submodel",
    "hierarchical/robust_acc_worst",
    "sub_mean/robust_acc_worst",
    ("fusion",),
    None,
    1,
  ),
  Claim(
    "OT fusion keeps the parents (control)",
    "from different initialisations, OT fusion (weights) keeps the two towers' mean clean "
    "accuracy to within 10 points, where plain averaging collapses",
    "direct_ot/clean_acc",
    "sub_mean/clean_acc",
    ("control",),
    None,
    0,
    "OTFusion's premise (Singh & Jaggi 2020), which HOT-CLIP builds on",
    margin=0.10,
  ),
  Claim(
    "OT fusion on activations keeps the parents (control)",
    "the same with units aligned on their activations (64 training images)",
    "direct_ot_acts/clean_acc",
    "sub_mean/clean_acc",
    ("control_acts",),
    "control",
    0,
    "OTFusion's activation-based variant",
    margin=0.10,
  ),
  Claim(
    "aligned start fine-tunes better (control)",
    f"after the same {CONTROL_FT_STEPS}-step fine-tune, the OT-fused model beats the averaged one "
    "(shape zero-shot)",
    "shapes_test/zeroshot/shape/acc1",
    "shapes_test/zeroshot/shape/acc1",
    ("control_ft/ot",),
    "control_ft/avg",
    1,
    "transformer fusion (Imfeld et al. 2024): OT fusion + fine-tune > vanilla average + fine-tune",
  ),
  Claim(
    "aligned start beats scratch (control)",
    f"the OT-fused model after its {CONTROL_FT_STEPS}-step fine-tune beats a tower after "
    f"{CONTROL_FT_STEPS} steps from scratch (shape zero-shot): the fusion keeps what the towers "
    "learnt",
    "shapes_test/zeroshot/shape/acc1",
    f"step{CONTROL_FT_STEPS}/shapes_test/zeroshot/shape/acc1",
    ("control_ft/ot",),
    "control_tower/a",
    1,
  ),
  Claim(
    "averaging collapses (control)",
    "from different initialisations, plain averaging is less accurate than the towers "
    "(clean; the premise's other half)",
    "average/clean_acc",
    "sub_mean/clean_acc",
    ("control",),
    None,
    -1,
  ),
)
