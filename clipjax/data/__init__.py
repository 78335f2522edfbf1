"""clipjax.data: random-access sources, corruptions and grain pipelines.

Sources (`Source` protocol): `SyntheticShapes`, `DigitsSource`, `FolderSource`,
`ArrayRecordSource`, `TfdsSource`, `ArraySource`. Corruptions: `NoisyCorrespondence`,
`TargetedPoisoning`, `Backdoor`. Pipelines: `make_train_iterator`, `iterate_eval`.
"""

from clipjax.data.corrupt import Backdoor, NoisyCorrespondence, TargetedPoisoning, add_trigger
from clipjax.data.digits import DigitsSource
from clipjax.data.pipeline import (
  BadRecordsError,
  EvalIterable,
  PipelineStats,
  TrainIterator,
  iterate_eval,
  make_train_iterator,
)
from clipjax.data.sources import (
  ArrayRecordSource,
  ArraySource,
  BadRecordError,
  FolderSource,
  LabelSet,
  Source,
  TfdsSource,
)
from clipjax.data.synthetic import SyntheticShapes
from clipjax.data.transforms import Augment

__all__ = [
  "ArrayRecordSource",
  "ArraySource",
  "Augment",
  "Backdoor",
  "BadRecordError",
  "BadRecordsError",
  "DigitsSource",
  "EvalIterable",
  "FolderSource",
  "LabelSet",
  "NoisyCorrespondence",
  "PipelineStats",
  "Source",
  "SyntheticShapes",
  "TargetedPoisoning",
  "TfdsSource",
  "TrainIterator",
  "add_trigger",
  "iterate_eval",
  "make_train_iterator",
]
