import os
import sys

import numpy as np
import pytest

from clipjax.data.synthetic import SyntheticShapes
from clipjax.train import data_setup

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config():
  sys.path.insert(0, REPO)
  from configs import quickstart

  return quickstart.get_config("smoke")


def test_train_labels_reach_model_inputs():
  c = _config()
  c.data.train_labels = ["colour", "shape"]
  it = data_setup.train_iterator(c, 0, 1)
  batch = data_setup.model_inputs(next(it))
  it.close()
  src = SyntheticShapes("train", image_size=c.data.image_size)
  want = [src.attributes(int(i)) for i in batch["index"]]
  assert batch["labels/colour"].tolist() == [a.colour for a in want]
  assert batch["labels/shape"].tolist() == [a.shape for a in want]
  assert batch["labels/shape"].dtype == np.int32
  assert batch["ids"].shape == (16, c.data.context_length)


def test_unknown_train_label_set_is_named():
  c = _config()
  c.data.train_labels = ["colur"]
  with pytest.raises(ValueError, match=r"\['colur'\]"):
    data_setup.train_iterator(c, 0, 1)
