"""HOT-CLIP: one adversarially fine-tuned submodel (attack a, prompt template t) of the fusion grid.

Fine-tunes the visual tower of `model.init_checkpoint` (a clipjax workdir, e.g. the quickstart,
or an exported checkpoint such as the shipped base `assets/bases/base_s0`)
with TeCoA (`loss=tecoa`: cross-entropy of zero-shot logits of ℓ∞ adversarial images against the
class prompts "template_t(classname)" of one label set of the synthetic world) or FARE
(`loss=fare`); text tower and logit scale frozen. ε, step size are in 1/255 pixel units.
Pass the base as `init=PATH` (not `--config.model.init_checkpoint`): its architecture, image
size, context length and tokenizer are then read from it (`runs.checkpoint_settings`) before the
prompts are tokenised.

Commands:
  python -m clipjax.main --config configs/quickstart.py --workdir /tmp/hot_base \
    --config.total_steps=300
  python -m clipjax.main \
    --config configs/hotclip_submodel.py:attack=pgd,prompt=0,init=/tmp/hot_base \
    --workdir /tmp/hot_pgd_0
  python -m clipjax.main --config configs/hotclip_submodel.py:smoke --workdir /tmp/hot_smoke

The grid |A| × |T| is one workdir per (attack, prompt); `configs/hotclip_fuse.py` fuses them.
Paper settings (appendix D, ViT-L/14 on ImageNet): AdamW lr 1e-5, wd 0.01, batch 128, ε = 4/255,
2 epochs; here lr/steps are scaled to a tiny CLIP on CPU.
"""

import ml_collections as mlc

from clipjax import config_lib, runs
from clipjax.data import registry
from clipjax.data.sources import label_sets_of
from clipjax.data.tokenizer import Tokenizer

FROZEN = [r"text/.*", r"logit_scale"]


def class_prompt_ids(
  data_spec: dict,
  image_size: int,
  context_length: int,
  label_set: str,
  prompt: int,
  tokenizer: str = "",
) -> list[list[int]]:
  """[C, L] token ids of `templates[prompt].format(classname)` for every class of `label_set`,
  by the `data.tokenizer` the model was trained with ("" = OpenAI's)."""
  sets = label_sets_of(registry.build_source(dict(data_spec), image_size))
  if label_set not in sets:
    raise ValueError(f"label_set={label_set!r} is not one of the source's {sorted(sets)}")
  ls = sets[label_set]
  if not 0 <= prompt < len(ls.templates):
    raise ValueError(
      f"prompt={prompt} is out of range for {len(ls.templates)} templates {ls.templates}"
    )
  tok = Tokenizer(tokenizer or None, context_length=context_length)
  return tok([ls.templates[prompt].format(c) for c in ls.classnames]).astype(int).tolist()


def get_config(arg: str | None = None) -> mlc.ConfigDict:
  arg = config_lib.parse_arg(
    arg,
    smoke=False,
    attack="pgd",
    prompt=0,
    loss="tecoa",
    label_set="shape",
    eps=4.0,
    step_size=1.0,
    steps=3,
    init="",
  )
  c = config_lib.train_config()
  if arg.smoke:
    config_lib.apply_smoke(c)
    c.total_steps = 3
    c.checkpoint.every_steps = 3
    c.eval.every_steps = 3
    c.eval.max_examples = 32
  else:
    c.total_steps = 60
    c.data.batch_size = 64
    c.log_every_steps = 10
    c.checkpoint.every_steps = 60
    c.eval.every_steps = 60
    c.eval.max_examples = 100  # a monitor only; the hotclip_fuse task evaluates the submodels
  c.model.init_checkpoint = arg.init
  if arg.init:
    # The base's architecture, sizes and tokenizer, so that the class prompts below are
    # tokenised as the base reads them (a later --config.data.* would not re-tokenise).
    runs.start_from(c, arg.init)
  c.data.train_labels = [arg.label_set]
  c.optim.lr = 1e-4
  c.optim.weight_decay = 0.01
  c.optim.warmup_frac = 0.1
  c.optim.frozen = list(FROZEN) + ([r"method/.*"] if arg.loss == "fare" else [])
  attack = {
    "attack": arg.attack,
    "eps": arg.eps / 255.0,
    "step_size": arg.step_size / 255.0,
    "steps": arg.steps,
    "decay": 1.0,
  }
  if arg.loss == "tecoa":
    ids = class_prompt_ids(
      c.data.train.to_dict() if hasattr(c.data.train, "to_dict") else dict(c.data.train),
      c.data.image_size,
      c.data.context_length,
      arg.label_set,
      arg.prompt,
      c.data.tokenizer,
    )
    c.method.name = "hotclip_tecoa"
    c.method.kwargs = {
      "label_key": f"labels/{arg.label_set}",
      "class_ids": ids,
      "logit_scale": None,
      **attack,
    }
  elif arg.loss == "fare":
    c.method.name = "hotclip_fare"
    c.method.kwargs = attack
  else:
    raise ValueError(f"loss={arg.loss!r} is not 'tecoa' or 'fare'")
  return c
