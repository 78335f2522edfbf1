"""Zero-shot and retrieval evaluation of any checkpoint on a list of datasets.

Command:
  python -m clipjax.main --config configs/eval.py --config.checkpoint=PATH --workdir DIR
  python -m clipjax.main --config configs/eval.py:smoke --config.checkpoint=PATH --workdir DIR

PATH is a clipjax workdir (its latest checkpoint) or an OpenAI / open_clip / HF checkpoint
(.safetensors file or directory). Writes DIR/summary.json, DIR/results.md, DIR/metrics.jsonl.
Datasets are data specs (clipjax/data/registry.py); TFDS datasets need a local data_dir, e.g.
--config.datasets.cifar10="{'name': 'tfds', 'tfds_name': 'cifar10', 'split': 'test',
'data_dir': '/data/tfds'}".
"""

import ml_collections as mlc

from clipjax import config_lib


def get_config(arg: str | None = None) -> mlc.ConfigDict:
  arg = config_lib.parse_arg(arg, smoke=False)
  c = mlc.ConfigDict()
  c.task = "eval"
  c.distributed = "auto"  # jax.distributed.initialize(): "auto", "on" or "off"
  c.checkpoint = ""  # clipjax workdir or imported checkpoint (required)
  c.tokenizer = ""  # merges file of the model's vocabulary ("": OpenAI's, shipped)
  c.image_size = 0  # 0: the model's own resolution
  c.context_length = 0  # 0: the model's own context length
  c.batch_size = 256  # images per batch
  c.max_examples = 2000  # per dataset (the first ones)
  c.datasets = {
    "shapes_test": {"name": "synthetic", "split": "test", "seed": 0},
    "digits_test": {"name": "digits", "split": "test"},
  }
  if arg.smoke:
    c.batch_size = 16
    c.max_examples = 48
  return c
