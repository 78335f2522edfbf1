"""RoCLIP-style baseline (Yang, Chen, Jiang, Mirzasoleiman, NeurIPS 2023, arXiv:2303.06854).

Follows the released code (``BigML-CS-UCLA/RoCLIP``: ``model/src/train.py``, ``memory_bank.py``,
``data.py``; shared/METHODS.md §4.4) with the pool, bank and cadence of ``rematching.py``:

* On re-matching epochs (``epoch % break_epoch == 0`` over 1-based epochs, break_epoch = 2:
  ``match_start = E, match_period = 2·E, match_duration = E``) each image's caption is replaced
  by its global-cosine nearest neighbour in a FIFO text bank (queried before the batch is
  enqueued, entries detached), and the symmetric CLIP loss is taken between the images and
  those captions; other epochs train plain CLIP.
* ``enqueue="matching"`` (published): the bank is written only on re-matching steps (RoCLIP's
  enqueue sits inside the re-matching branch); ``"always"`` writes every step (the variant
  clipjax ran before).
* ``cross_aug=True`` (the README's command): training pairs are an augmented image and an
  augmented caption that is fixed per example.

Not reconstructible here, stated: RoCLIP's image augmentation is RandomHorizontalFlip,
RandomResizedCrop, colour jitter (p 0.8), grayscale (p 0.2) and Gaussian blur; the synthetic
captions name positions and colours, so flips, crops and grayscale would make the pairs
wrong, and the augmentation is the position-preserving translation + brightness/contrast
jitter of ``rematching.augment_images``. Its caption augmentation is EDA (synonym replacement,
random insertion, random swap, random deletion via WordNet), computed once per caption; here
it is token dropout (random deletion) with a per-example key. lightly's memory bank starts
filled with random vectors; here unfilled slots are never chosen (an image keeps its own
caption while the bank is empty).
"""

from __future__ import annotations

from collections.abc import Callable

from clipjax.methods import otcclip
from clipjax.methods.base import Method

__all__ = ["METHODS", "roclip"]


def roclip(
  *,
  pool: str,
  bank_size: int,
  match_start: int,
  match_period: int,
  match_duration: int,
  enqueue: str,
  cross_aug: bool,
  aug_shift: int,
  aug_jitter: float,
  token_dropout: float,
  truth_labels: tuple[str, ...] | list[str] = (),
) -> Method:
  """RoCLIP-style global nearest-neighbour re-matching (module docstring).

  Built on OTCCLIP's engine with ``matching="global"`` and no OT terms, so that the OTCCLIP
  ablations differ from it only in the fields they name.
  """
  return otcclip.build(
    otcclip.OTCConfig(
      matching="global",
      pool=pool,
      bank_size=bank_size,
      context_length=0,
      enqueue=enqueue,
      shortlist_k=1,
      match_alpha=1.0,
      match_start=match_start,
      match_period=match_period,
      match_duration=match_duration,
      clip_weight=1.0,
      inter_weight=0.0,
      intra_weight=0.0,
      aug_shift=aug_shift,
      aug_jitter=aug_jitter,
      token_dropout=token_dropout,
      cross_aug=cross_aug,
      truth_labels=tuple(truth_labels),
    )
  )


METHODS: dict[str, Callable[..., Method]] = {"roclip": roclip}
