"""Quickstart: a tiny CLIP trained from scratch on the procedural shapes world, on 2 CPU cores.

Command:
  python -m clipjax.main --config configs/quickstart.py --workdir /tmp/clipjax_quickstart
  python -m clipjax.main --config configs/quickstart.py:smoke --workdir /tmp/qs_smoke  # seconds

Expected: about 10 minutes on 2 CPU cores; the closing table shows zero-shot accuracy per label
set (colour, size, position, shape, colour+shape) and image<->text R@1/R@5 on held-out data, each
beside its chance level. Measured numbers are in docs/results.md.
"""

import ml_collections as mlc

from clipjax import config_lib


def get_config(arg: str | None = None) -> mlc.ConfigDict:
  arg = config_lib.parse_arg(arg, smoke=False)
  c = mlc.ConfigDict()
  c.task = "train"
  c.seed = 0
  c.total_steps = 1000  # ~10 min on 2 CPU cores at 48 px, batch 128 (docs/results.md)
  c.log_every_steps = 50  # console line + metrics.jsonl event
  c.distributed = "auto"  # jax.distributed.initialize(): "auto", "on" or "off"
  c.mesh = {"data": -1, "fsdp": 1, "tensor": 1}  # -1: all remaining devices
  c.tensorboard = False  # also write tensorboardX events (pip install 'clipjax[tb]')

  c.model = mlc.ConfigDict()
  c.model.name = "tiny"  # a key of clipjax.model.VARIANTS
  c.model.init_checkpoint = ""  # clipjax workdir or OpenAI/open_clip/HF checkpoint to start from
  # Width-128 towers; fixed 2-D sin-cos positions and mean pooling are what lets a tiny ViT
  # learn position words on CPU (shared/QUICKSTART-NOTES.md).
  c.model.overrides = {
    "embed_dim": 128,
    "vision": {
      "patch_size": 8,
      "width": 128,
      "layers": 4,
      "heads": 4,
      "mlp_dim": 512,
      "pool": "mean",
      "pos_embed": "learned+sincos2d",
    },
    "text": {"width": 128, "layers": 4, "heads": 4, "mlp_dim": 512},
  }

  c.data = mlc.ConfigDict()
  c.data.train = {"name": "synthetic", "split": "train", "seed": 0}  # see clipjax.train.data_setup
  c.data.batch_size = 128  # global batch
  c.data.image_size = 48  # model input resolution (overrides model vision.image_size)
  c.data.context_length = 32  # tokens per caption (overrides model text.context_length)
  c.data.augment = False  # random-resized-crop/flip would destroy position words
  c.data.num_workers = 0  # grain workers; 0 is fastest on 2 cores
  c.data.max_bad_fraction = 0.01  # stop if more records than this are undecodable

  c.method = mlc.ConfigDict()
  c.method.name = "clip"  # a key of clipjax.methods.REGISTRY
  c.method.kwargs = mlc.ConfigDict()

  c.optim = mlc.ConfigDict()
  c.optim.lr = 1e-3
  c.optim.end_lr_frac = 0.0
  c.optim.warmup_frac = 0.05
  c.optim.b1 = 0.9
  c.optim.b2 = 0.98
  c.optim.eps = 1e-6
  c.optim.weight_decay = 0.1
  c.optim.clip_grad_norm = 1.0
  c.optim.grad_accum_steps = 1
  c.optim.wd_exclude = [r".*/bias", r".*/scale", r".*embedding.*", r"logit_.*"]  # no weight decay
  c.optim.frozen = []  # regexes of parameters that are not trained

  c.checkpoint = mlc.ConfigDict()
  c.checkpoint.every_steps = 250
  c.checkpoint.max_to_keep = 2
  c.checkpoint.keep_period = 0  # also keep every N-th step (0: none)
  c.checkpoint.async_save = True

  c.eval = mlc.ConfigDict()
  c.eval.every_steps = 500  # and always at the end
  c.eval.batch_size = 256
  c.eval.max_examples = 1000  # per dataset
  c.eval.datasets = {"shapes_test": {"name": "synthetic", "split": "test", "seed": 0}}

  if arg.smoke:
    config_lib.apply_smoke(c)
  return c
