"""Zero-shot and retrieval evaluation of any checkpoint on a list of datasets.

Command:
  python -m clipjax.main --config configs/eval.py --config.checkpoint=PATH --workdir DIR
  python -m clipjax.main --config configs/eval.py:smoke --config.checkpoint=PATH --workdir DIR

PATH is a clipjax workdir (its latest checkpoint) or an OpenAI / open_clip / HF checkpoint
(.safetensors file or directory). Writes DIR/summary.json, DIR/results.md, DIR/metrics.jsonl
and, when matplotlib is installed (`pip install 'clipjax[plot]'`) and config.plots is True, PNG
figures next to them: robustness_*.png (accuracy vs ε), risk_coverage_*.png, and for the first
dataset pca_*.png (image vs caption embeddings) and similarity_*.png.
A dataset spec with `corrupt` of kind "poison" or "backdoor" also gets its attack success rate
(`{ds}/asr/...`; clean metrics on uncorrupted images, see clipjax/evaluation/suite.py).
Linear probe: --config.linear_probe.enabled=True (fits on each dataset's train split); tuple
options from the command line as strings, e.g. --config.linear_probe.k_shots='(1, 4)'.
Datasets are data specs (clipjax/data/registry.py), name -> spec; replace the list from the
command line (the whole dict: a locked config takes no new keys). TFDS datasets need a local
data_dir and get CLIP's class names and prompt templates; a folder table with a `label` column
gets a label set of that name:
  python -m clipjax.main --config configs/eval.py --config.checkpoint=PATH --workdir DIR \\
    --config.datasets="{'cifar10': {'name': 'tfds', 'tfds_name': 'cifar10', 'split': 'test', \\
    'data_dir': '/data/tfds'}, 'mine': {'name': 'folder', 'table': '/data/mine/test.csv'}}"
Attacks are one string, settable from the command line (clipjax.attacks.parse_attacks):
  --config.robustness.attacks='pgd:eps=4/255,steps=10;apgd-ce:eps=4/255'   ('none': no attacks)
They attack each dataset's first label set unless robustness.label_set names one. Every stage
prints progress with an ETA; finished parts are saved to summary.json ("finished": false) and
metrics.jsonl as they finish.
"""

import ml_collections as mlc

from clipjax import config_lib


def get_config(arg: str | None = None) -> mlc.ConfigDict:
  arg = config_lib.parse_arg(arg, smoke=False)
  c = mlc.ConfigDict()
  c.task = "eval"
  c.distributed = "auto"  # jax.distributed.initialize(): "auto", "on" or "off"
  c.checkpoint = ""  # clipjax workdir or imported checkpoint (required)
  c.tokenizer = ""  # merges file of the model's vocabulary ("": a clipjax run's own, else OpenAI's)
  c.image_size = 0  # 0: the model's own resolution
  c.context_length = 0  # 0: the model's own context length
  c.batch_size = 256  # images per batch
  c.max_examples = 2000  # per dataset (the first ones)
  c.datasets = {"shapes_test": {"name": "synthetic", "split": "test", "seed": 0}}
  # How a class's prompts combine: "mean" (CLIP's averaged directions) or "posterior" (the
  # class's share of the image->text softmax over all prompts; the shapes recipes' rule with
  # the dataset option "label_templates": "captions").
  c.zeroshot_ensemble = "mean"
  # White-box attacks on the zero-shot classifier of one label set per dataset.
  c.robustness = mlc.ConfigDict()
  c.robustness.label_set = ""  # "": each dataset's first label set; or a name every dataset has
  c.robustness.max_examples = 500  # per dataset
  # ';'-separated `name:key=value,...` (clipjax.attacks.parse_attacks); "none": no attacks.
  c.robustness.attacks = (
    "fgsm:eps=1/255,label=fgsm@1;"
    "pgd:eps=1/255,step_size=0.25/255,steps=10,label=pgd10@1;"
    "pgd:eps=4/255,step_size=1/255,steps=10,label=pgd10@4;"
    "mim:eps=4/255,step_size=1/255,steps=10,label=mim10@4;"
    "apgd-ce:eps=4/255,steps=20,label=apgd20@4"
  )
  c.plots = True  # PNG figures next to summary.json (skipped, with a message, without matplotlib)
  # Selective classification of the zero-shot classifier: risk (error rate) among the
  # ⌈s·n⌉ most confident images at each coverage s, and risk–coverage curves in summary.json.
  c.selective = mlc.ConfigDict()
  c.selective.enabled = True
  c.selective.coverages = (0.5, 0.8)  # coverages s in (0, 1] reported as risk@s
  c.selective.label_sets = ()  # () = every label set of each dataset
  # "msp": maximum softmax probability; "partial_ot": OT-CLIP's partial-OT rule (one entropic
  # partial-OT solve per coverage point, clipjax.methods.otclip.partial_ot_selective).
  c.selective.selectors = ("msp",)
  c.selective.partial_ot_epsilon = 0.05  # entropic ε of the partial-OT selector (cost 1 - cos)
  c.selective.curve_points = 10  # coverages of the partial-OT curve (evenly spaced in (0, 1])
  # Linear probe on frozen image embeddings (clipjax.evaluation.linear_probe): multinomial
  # logistic regression fitted with L-BFGS on the dataset spec with `split` replaced by
  # train_split, weight decay chosen on a split-off validation fraction, then refit on
  # train + val and tested on the evaluated images. Keys: {ds}/linear_probe/{label set}/acc1
  # and, per k in k_shots, {ds}/linear_probe/{label set}/{k}shot/acc1.
  c.linear_probe = mlc.ConfigDict()
  c.linear_probe.enabled = False
  c.linear_probe.train_split = "train"  # must differ from the evaluated split
  c.linear_probe.max_train = 2000  # training examples (the first ones of train_split)
  c.linear_probe.label_sets = ()  # () = every label set of each dataset
  c.linear_probe.k_shots = ()  # also few-shot probes with k examples per class, e.g. (1, 4, 16)
  c.linear_probe.l2_grid = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)  # weight decay on W (mean CE loss)
  c.linear_probe.val_fraction = 0.2  # share of the training examples held out to pick l2
  c.linear_probe.seed = 0  # validation split and few-shot draws
  c.linear_probe.max_iter = 1000  # L-BFGS iterations per fit
  if arg.smoke:
    c.batch_size = 16
    c.max_examples = 48
    c.robustness.max_examples = 16
    c.robustness.attacks = "pgd:eps=4/255,step_size=1/255,steps=2"
    c.linear_probe.max_train = 64
    c.linear_probe.l2_grid = (1e-4, 1e-2)
    c.linear_probe.max_iter = 100
  return c
