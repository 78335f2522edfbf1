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
  c.datasets = {"shapes_test": {"name": "synthetic", "split": "test", "seed": 0}}
  # White-box attacks on the zero-shot classifier of one label set (empty list: skip).
  c.robustness = mlc.ConfigDict()
  c.robustness.label_set = "shape"  # a label set every dataset in c.datasets has
  c.robustness.max_examples = 500  # per dataset
  c.robustness.attacks = [
    {"name": "fgsm", "eps": 1 / 255, "label": "fgsm@1"},
    {"name": "pgd", "eps": 1 / 255, "step_size": 0.25 / 255, "steps": 10, "label": "pgd10@1"},
    {"name": "pgd", "eps": 4 / 255, "step_size": 1 / 255, "steps": 10, "label": "pgd10@4"},
    {"name": "mim", "eps": 4 / 255, "step_size": 1 / 255, "steps": 10, "label": "mim10@4"},
    {"name": "apgd-ce", "eps": 4 / 255, "steps": 20, "label": "apgd20@4"},
  ]
  if arg.smoke:
    c.batch_size = 16
    c.max_examples = 48
    c.robustness.max_examples = 16
    c.robustness.attacks = [{"name": "pgd", "eps": 4 / 255, "step_size": 1 / 255, "steps": 2}]
  return c
