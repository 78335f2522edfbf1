"""COLA (Zhu et al., NeurIPS 2025) on a checkpoint: clean, transfer and adaptive robust accuracy.

Commands (the first trains the quickstart tiny CLIP, ~10 min on 2 CPU cores):
  python -m clipjax.main --config configs/quickstart.py --workdir /tmp/clipjax_quickstart
  python -m clipjax.main --config configs/cola.py:ckpt=/tmp/clipjax_quickstart \
    --workdir /tmp/cola_eval  # about an hour on 2 CPU cores; an interrupted run resumes
  python -m clipjax.main --config configs/cola.py:ckpt=/tmp/clipjax_quickstart,attacks=pgd,eps=4 \
    --workdir /tmp/cola_pgd4  # one radius, PGD only
  python -m clipjax.main --config configs/cola.py:smoke --workdir /tmp/cola_smoke  # seconds
  # digits: a model from configs/quickstart.py:world=digits
  python -m clipjax.main --config configs/cola.py:ckpt=/tmp/qs_digits,world=digits --workdir DIR

`ckpt` is a clipjax workdir (its checkpoints/) or an OpenAI/open_clip/HF checkpoint such as a
shipped base (`assets/bases/base_s0`); the model section, image size, context length and
tokenizer are read from it (`runs.checkpoint_settings`). Results: workdir/results.md
and summary.json; measured numbers in docs/results/cola.md. Every COLA value is explicit below;
the reconstructed ones (no public code) are documented in clipjax/methods/cola.py.
"""

import ml_collections as mlc

from clipjax import config_lib, runs


def get_config(arg: str | None = None) -> mlc.ConfigDict:
  arg = config_lib.parse_arg(
    arg,
    smoke=False,
    ckpt="",
    n=200,
    # "synthetic" (the default shapes world), "digits" (label set "digit", 10 classes) or a
    # named shapes world of config_lib.SHAPES_WORLDS ("many": 77 colour+shape classes x 12
    # prompts, more text features than the embedding width: where OT and Π can matter).
    world="synthetic",
    label_set="",  # "": "digit" for digits, "colour+shape" for many, else "colour"
    # Prompts per class of the shapes worlds: "default" (3) or "rich" (12; world=many's own).
    # With label_set=colour+shape, rich gives 30 classes x 12 = 360 text features, more than
    # the tiny model's width (128): with components=64, Π is then no longer the identity.
    templates="",
    # C, principal text directions kept by Π (paper: 256 at width 512). Π is the identity once C
    # reaches min(width, #text features): with world=many (924 features) and the tiny model
    # (width 128), the paper's ratio C/width = 1/2 is components=64.
    components=256,
    attacks="all",  # "pgd", "square" or "all"
    eps="1+4",  # radii in 1/255 units, "+"-separated
    eot=4,
    pgd_steps=10,  # PGD iterations (step 1/255, random start)
    # PGD objectives, "+"-separated: "ce" (the paper's), "margin" (CW) or "dlr". CE on logits
    # scaled by 100 saturates on confidently correct examples (its gradient underflows to 0);
    # the margin objectives do not. Labels: pgd_eps<e> for CE, pgd-<loss>_eps<e> otherwise.
    loss="ce",
    queries=200,
    adaptive="cola+cola_no_proj+cola_uniform+views_mean",
  )
  train = config_lib.train_config()
  c = mlc.ConfigDict()
  c.task = "cola_eval"
  c.seed = 0
  c.distributed = "auto"
  c.model = train.model
  c.model.init_checkpoint = arg.ckpt
  c.data = mlc.ConfigDict()
  c.data.image_size = train.data.image_size
  c.data.context_length = train.data.context_length
  c.data.tokenizer = ""  # BPE merges file; "": the checkpoint workdir's, else OpenAI's (shipped)

  c.eval = mlc.ConfigDict()
  worlds = ("synthetic", "digits", *config_lib.SHAPES_WORLDS)
  if arg.world not in worlds:
    raise ValueError(f"world must be one of {worlds}, got {arg.world!r}")
  if arg.world in config_lib.SHAPES_WORLDS:
    c.eval.dataset = config_lib.shapes_world(arg.world, "test")
  else:
    c.eval.dataset = {"name": arg.world, "split": "test", "seed": 0}
  if arg.templates:
    if arg.world == "digits" or arg.templates not in ("default", "rich"):
      raise ValueError(
        f"templates must be 'default' or 'rich' on a shapes world, got {arg.templates!r} "
        f"with world={arg.world!r}"
      )
    c.eval.dataset = {**c.eval.dataset, "label_templates": arg.templates}
  # "colour": 6 classes (the quickstart model's best crop-invariant label set: 0.85 clean;
  # "shape" is 0.33, chance 0.20); "digit": 10 classes; 3 templates each.
  c.eval.label_set = arg.label_set or {"digits": "digit", "many": "colour+shape"}.get(
    arg.world, "colour"
  )
  c.eval.max_examples = arg.n
  c.eval.batch_size = 50

  c.cola = mlc.ConfigDict()
  c.cola.descriptions_path = ""  # JSON {"classname": ["description", ...]}; "" = templates only
  c.cola.max_descriptions = 50  # paper: M saturates beyond 50
  c.cola.base = {
    "num_views": 8,  # N incl. the centre view (paper: saturates beyond 5)
    # AWT/torchvision use (0.08, 1); the 48 px shapes world has one small off-centre shape that
    # crops below ~0.3 of the area often miss, so we use (0.3, 1) here (a deviation).
    "crop_scale": (0.3, 1.0),
    "crop_ratio": (3.0 / 4.0, 4.0 / 3.0),
    "flip": True,
    "centre_crop": 1.0,  # test images are already at model resolution
    "num_components": arg.components,  # capped by the width and the number of text features
    "projection": True,
    "use_ot": True,
    "marginals": "entropy",
    "weight_temperature": 0.5,
    "epsilon": 0.1,
    "num_iters": 100,
    "ot_grad": "unroll",
    "logit_scale": 100.0,
  }
  # name -> overrides of `base`; the ablations of the paper and of shared/METHODS.md §3.5.
  c.cola.variants = {
    "cola": {},
    "cola_no_proj": {"projection": False},
    "cola_uniform": {"marginals": "uniform"},
    "views_mean": {"use_ot": False, "projection": False},
    # Views + Π without OT: with cola_no_proj (views + OT) the paired ablation of issue 20.
    "views_proj": {"use_ot": False, "projection": True},
  }
  radii = [int(e) for e in str(arg.eps).split("+") if e]
  pgd_losses = [v for v in str(arg.loss).split("+") if v]
  bad = sorted(set(pgd_losses) - {"ce", "margin", "dlr"})
  if bad or not pgd_losses:
    raise ValueError(f"loss must be '+'-separated 'ce', 'margin' or 'dlr', got {arg.loss!r}")
  pgd = [
    {
      "name": "pgd",
      "eps": eps / 255,
      "step_size": 1 / 255,
      "steps": arg.pgd_steps,
      "loss": loss,
      "label": f"pgd_eps{eps}" if loss == "ce" else f"pgd-{loss}_eps{eps}",
    }
    for loss in pgd_losses
    for eps in radii
  ]
  # Black-box Square (gradient-masking check): margin loss, AutoAttack's p_init, a small query
  # budget (CPU); each query of a randomised defence sees one fresh view draw.
  square = [
    {
      "name": "square",
      "eps": eps / 255,
      "n_queries": arg.queries,
      "p_init": 0.8,
      "loss": "margin",
      "eot_draws": 1,
      "label": f"square_eps{eps}",
    }
    for eps in radii
  ]
  if arg.attacks not in ("pgd", "square", "all"):
    raise ValueError(f"attacks must be 'pgd', 'square' or 'all', got {arg.attacks!r}")
  # Square first: the gradient-masking check is the part a short run must not miss.
  c.attacks = {"pgd": pgd, "square": square, "all": square + pgd}[arg.attacks]
  c.eot_draws = arg.eot  # view draws averaged per gradient in the adaptive attack
  c.adaptive_variants = [v for v in arg.adaptive.split("+") if v]
  unknown = sorted(set(c.adaptive_variants) - set(c.cola.variants))
  if unknown:
    raise ValueError(f"adaptive variants {unknown} not in cola.variants {sorted(c.cola.variants)}")

  if arg.smoke:
    smoke = config_lib.apply_smoke(config_lib.train_config())
    c.model = smoke.model
    c.model.init_checkpoint = arg.ckpt
    c.data.image_size = smoke.data.image_size
    c.eval.max_examples = 4
    c.eval.batch_size = 4
    c.cola.base["num_views"] = 2
    c.cola.base["num_iters"] = 3
    c.cola.variants = {"cola": {}}
    c.attacks = [
      {"name": "pgd", "eps": 4 / 255, "step_size": 4 / 255, "steps": 1},
      # Transfer-only here (Square through a randomised classifier: tests/attacks).
      {
        "name": "square",
        "eps": 4 / 255,
        "n_queries": 2,
        "p_init": 0.8,
        "loss": "margin",
        "adaptive": False,
      },
    ]
    c.eot_draws = 1
    c.adaptive_variants = ["cola"]
  if arg.ckpt:
    runs.start_from(c, arg.ckpt)  # its architecture, sizes and tokenizer, not the recipe's
  return c
