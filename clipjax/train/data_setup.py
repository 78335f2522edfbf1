"""Training data from `config.data`: tokenizer, source, host-local iterator, model inputs."""

from __future__ import annotations

import functools
from typing import Any

import ml_collections as mlc
import numpy as np

from clipjax.data import pipeline, registry
from clipjax.data.tokenizer import Tokenizer

__all__ = ["model_inputs", "stats", "tokenizer", "train_iterator"]

# Keys of a host batch that go to the device: everything numeric the methods may read.
_MODEL_KEYS = ("image", "ids", "index", "is_noisy", "is_poisoned", "is_backdoor", "clean_index")


@functools.cache
def _tokenizer(merges_path: str | None, context_length: int) -> Tokenizer:
  return Tokenizer(merges_path or None, context_length=context_length)


def tokenizer(config: mlc.ConfigDict) -> Tokenizer:
  """The shipped CLIP BPE (or `config.data.tokenizer` merges file) at the config's length."""
  return _tokenizer(config.data.tokenizer or None, config.data.context_length)


def train_iterator(config: mlc.ConfigDict, process_index: int, process_count: int):
  """This process's share of the global batch, as a checkpointable `TrainIterator`."""
  source = registry.build_source(config.data.train.to_dict(), config.data.image_size)
  return pipeline.make_train_iterator(
    source,
    batch_size=config.data.batch_size // process_count,
    image_size=config.data.image_size,
    tokenize=tokenizer(config),
    seed=config.seed,
    augment=config.data.augment,
    process_index=process_index,
    process_count=process_count,
    num_workers=config.data.num_workers,
    max_bad_fraction=config.data.max_bad_fraction,
    label_names=tuple(config.data.train_labels),
  )


def model_inputs(batch: dict[str, Any]) -> dict[str, np.ndarray]:
  """The numeric arrays of a host batch that the train step consumes.

  Label sets requested with `config.data.train_labels` arrive as `labels/<name>` int32 [b]
  (−1 where the source has no label).
  """
  out = {k: np.asarray(batch[k]) for k in _MODEL_KEYS if k in batch}
  for name, labels in batch.get("labels", {}).items():
    out[f"labels/{name}"] = np.asarray(labels)
  return out


def stats(it: Any) -> dict[str, float]:
  """Data-pipeline counters for metrics.jsonl."""
  s = getattr(it, "stats", None)
  if s is None:
    return {}
  return s.metrics()
