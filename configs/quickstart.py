"""Quickstart: a tiny CLIP trained from scratch on the procedural shapes world, on 2 CPU cores.

Command:
  python -m clipjax.main --config configs/quickstart.py --workdir /tmp/clipjax_quickstart
  python -m clipjax.main --config configs/quickstart.py:smoke --workdir /tmp/qs_smoke  # seconds
  # the same model on scikit-learn's handwritten digits (pip install 'clipjax[digits]'):
  python -m clipjax.main --config configs/quickstart.py:world=digits --workdir /tmp/qs_digits

Expected: about 7 minutes on 2 CPU cores; the closing table shows zero-shot accuracy per label
set (colour, size, position, shape, colour+shape; the world's caption prompts with the posterior
rule, `config_lib.apply_shapes_recipe`) and image<->text R@1/R@5 on held-out data, each beside
its chance level. Measured numbers are in docs/results.md.
"""

import ml_collections as mlc

from clipjax import config_lib


def get_config(arg: str | None = None) -> mlc.ConfigDict:
  arg = config_lib.parse_arg(arg, smoke=False, world="synthetic")
  c = config_lib.train_config()
  config_lib.apply_shapes_recipe(c)
  if arg.world == "digits":  # 1,257 train / 270 test images, label set "digit"
    c.data.train = {"name": "digits", "split": "train", "seed": 0}
    c.eval.datasets = {"digits_test": {"name": "digits", "split": "test", "seed": 0}}
  elif arg.world != "synthetic":
    raise ValueError(f"world must be 'synthetic' or 'digits', got {arg.world!r}")
  c.checkpoint.every_steps = c.total_steps // 2
  c.eval.every_steps = 0  # evaluate once, at the end
  if arg.smoke:
    config_lib.apply_smoke(c)
  return c
