"""Class names and prompt templates for zero-shot classification.

Templates are those of the CLIP paper (Radford et al. 2021): OpenAI's 80 ImageNet templates
(notebook "Prompt Engineering for ImageNet") and the per-dataset templates listed in the CLIP
repository's `data/prompts.md`. Every template has one "{}" for the class name. The synthetic
and digits worlds ship their own label sets (`clipjax.data`, `LabelSet.templates`).

`label_set(name, label_names=None)` returns `(classnames, templates)` for a TFDS dataset name;
datasets without hand-written class names (ImageNet, Food-101, Pets, Flowers, DTD, ...) take
them from the dataset's own label names, cleaned by `clean_classname`.
"""

from collections.abc import Sequence

__all__ = [
  "CLASSNAMES",
  "IMAGENET_TEMPLATES",
  "TEMPLATES",
  "clean_classname",
  "label_set",
]

IMAGENET_TEMPLATES = (
  "a bad photo of a {}.",
  "a photo of many {}.",
  "a sculpture of a {}.",
  "a photo of the hard to see {}.",
  "a low resolution photo of the {}.",
  "a rendering of a {}.",
  "graffiti of a {}.",
  "a bad photo of the {}.",
  "a cropped photo of the {}.",
  "a tattoo of a {}.",
  "the embroidered {}.",
  "a photo of a hard to see {}.",
  "a bright photo of a {}.",
  "a photo of a clean {}.",
  "a photo of a dirty {}.",
  "a dark photo of the {}.",
  "a drawing of a {}.",
  "a photo of my {}.",
  "the plastic {}.",
  "a photo of the cool {}.",
  "a close-up photo of a {}.",
  "a black and white photo of the {}.",
  "a painting of the {}.",
  "a painting of a {}.",
  "a pixelated photo of the {}.",
  "a sculpture of the {}.",
  "a bright photo of the {}.",
  "a cropped photo of a {}.",
  "a plastic {}.",
  "a photo of the dirty {}.",
  "a jpeg corrupted photo of a {}.",
  "a blurry photo of the {}.",
  "a photo of the {}.",
  "a good photo of the {}.",
  "a rendering of the {}.",
  "a {} in a video game.",
  "a photo of one {}.",
  "a doodle of a {}.",
  "a close-up photo of the {}.",
  "a photo of a {}.",
  "the origami {}.",
  "the {} in a video game.",
  "a sketch of a {}.",
  "a doodle of the {}.",
  "a origami {}.",
  "a low resolution photo of a {}.",
  "the toy {}.",
  "a rendition of the {}.",
  "a photo of the clean {}.",
  "a photo of a large {}.",
  "a rendition of a {}.",
  "a photo of a nice {}.",
  "a photo of a weird {}.",
  "a blurry photo of a {}.",
  "a cartoon {}.",
  "art of a {}.",
  "a sketch of the {}.",
  "a embroidered {}.",
  "a pixelated photo of a {}.",
  "itap of the {}.",
  "a jpeg corrupted photo of the {}.",
  "a good photo of a {}.",
  "a plushie {}.",
  "a photo of the nice {}.",
  "a photo of the small {}.",
  "a photo of the weird {}.",
  "the cartoon {}.",
  "art of the {}.",
  "a drawing of the {}.",
  "a photo of the large {}.",
  "a black and white photo of a {}.",
  "the plushie {}.",
  "a dark photo of a {}.",
  "itap of a {}.",
  "graffiti of the {}.",
  "a toy {}.",
  "itap of my {}.",
  "a photo of a cool {}.",
  "a photo of a small {}.",
  "a tattoo of the {}.",
)
"""OpenAI's 80 ImageNet prompt templates (CLIP paper, Sec. 3.1.4)."""

_CIFAR_TEMPLATES = tuple(
  f"a {style}photo of {article} {size}{{}}."
  for article in ("a", "the")
  for style, size in (
    ("", ""),
    ("blurry ", ""),
    ("black and white ", ""),
    ("low contrast ", ""),
    ("high contrast ", ""),
    ("bad ", ""),
    ("good ", ""),
    ("", "small "),
    ("", "big "),
  )
)
"""CLIP's 18 CIFAR-10/100 templates."""

TEMPLATES: dict[str, tuple[str, ...]] = {
  "imagenet2012": IMAGENET_TEMPLATES,
  "cifar10": _CIFAR_TEMPLATES,
  "cifar100": _CIFAR_TEMPLATES,
  "mnist": ('a photo of the number: "{}".',),
  "svhn_cropped": ('a photo of the number: "{}".',),
  "stl10": ("a photo of a {}.", "a photo of the {}."),
  "food101": ("a photo of {}, a type of food.",),
  "oxford_iiit_pet": ("a photo of a {}, a type of pet.",),
  "oxford_flowers102": ("a photo of a {}, a type of flower.",),
  "dtd": tuple(
    f"a photo of {article} {{}} {kind}."
    for article in ("a", "the")
    for kind in ("texture", "pattern", "thing", "object")
  ),
  "eurosat": (
    "a centered satellite photo of {}.",
    "a centered satellite photo of a {}.",
    "a centered satellite photo of the {}.",
  ),
  "caltech101": (
    "a photo of a {}.",
    "a painting of a {}.",
    "a plastic {}.",
    "a sculpture of a {}.",
    "a sketch of a {}.",
    "a tattoo of a {}.",
    "a toy {}.",
    "a rendition of a {}.",
    "a embroidered {}.",
    "a cartoon {}.",
    "a {} in a video game.",
    "a plushie {}.",
    "a origami {}.",
    "art of a {}.",
    "graffiti of a {}.",
    "a drawing of a {}.",
    "a doodle of a {}.",
    "a photo of the {}.",
    "a painting of the {}.",
    "the plastic {}.",
    "a sculpture of the {}.",
    "a sketch of the {}.",
    "a tattoo of the {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "the embroidered {}.",
    "the cartoon {}.",
    "the {} in a video game.",
    "the plushie {}.",
    "the origami {}.",
    "art of the {}.",
    "graffiti of the {}.",
    "a drawing of the {}.",
    "a doodle of the {}.",
  ),
}
"""Per-dataset templates, keyed by TFDS dataset name."""

GENERIC_TEMPLATES = ("a photo of a {}.", "a photo of the {}.")
"""Fallback for datasets without published templates."""

CLASSNAMES: dict[str, tuple[str, ...]] = {
  "cifar10": (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
  ),
  "cifar100": (
    "apple", "aquarium fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak tree", "orange", "orchid", "otter", "palm tree", "pear", "pickup truck", "pine tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
    "wardrobe", "whale", "willow tree", "wolf", "woman", "worm",
  ),
  "mnist": tuple(str(i) for i in range(10)),
  "svhn_cropped": tuple(str(i) for i in range(10)),
  "stl10": (
    "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck",
  ),
  "eurosat": (
    "annual crop land", "forest", "brushland or shrubland", "highway or road",
    "industrial buildings or commercial buildings", "pasture land", "permanent crop land",
    "residential buildings or homes or apartments", "river", "lake or sea",
  ),
}  # fmt: skip
"""CLIP's class names (label order = TFDS label order) where they differ from TFDS's names."""


def clean_classname(name: str) -> str:
  """TFDS label name -> prompt word: "maple_tree" -> "maple tree", "n01440764" stays."""
  return name.replace("_", " ").strip()


def label_set(
  dataset: str, label_names: Sequence[str] | None = None
) -> tuple[list[str], list[str]]:
  """Class names and templates for a dataset.

  Args:
    dataset: TFDS name (a "/config" or ":version" suffix is ignored).
    label_names: the dataset's own label names (`info.features["label"].names`); used when no
      CLIP class names are listed here, and checked against the listed ones' count otherwise.

  Returns:
    `(classnames, templates)`.
  """
  base = dataset.split(":")[0].split("/")[0]
  templates = list(TEMPLATES.get(base, GENERIC_TEMPLATES))
  if base in CLASSNAMES:
    names = list(CLASSNAMES[base])
    if label_names is not None and len(label_names) != len(names):
      raise ValueError(
        f"{dataset}: dataset has {len(label_names)} labels but {len(names)} CLIP class names"
      )
    return names, templates
  if label_names is None:
    raise ValueError(
      f"no class names listed for {dataset!r}; pass the dataset's label_names "
      f"(listed: {sorted(CLASSNAMES)})"
    )
  return [clean_classname(n) for n in label_names], templates
