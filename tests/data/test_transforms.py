"""Eval preprocessing against open_clip's own transform (PIL reference values in a fixture)."""

import pathlib

import numpy as np
import pytest

from clipjax.data import transforms

FIXTURE = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "parity" / "preprocess.npz"


@pytest.mark.parametrize("resize_mode", ["shortest", "squash"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_resize_center_crop_matches_open_clip(interpolation, resize_mode):
  """`scripts/make_parity_fixtures.py` ran open_clip's eval `image_transform` on these images."""
  ref = np.load(FIXTURE)
  size = int(ref["size"])
  images = sorted(k for k in ref.files if k.startswith("image_"))
  assert len(images) >= 7  # portrait, landscape, odd, square, identity, upsampled, tall
  for key in images:
    img = ref[key]
    want = ref[f"out_{key.removeprefix('image_')}_{interpolation}_{resize_mode}"]
    got = transforms.resize_center_crop(
      img, size, interpolation=interpolation, resize_mode=resize_mode
    )
    assert got.shape == (size, size, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, np.round(want * 255).astype(np.uint8), err_msg=key)


def test_resize_center_crop_rejects_unknown_modes():
  img = np.zeros((4, 6, 3), np.uint8)
  with pytest.raises(ValueError, match="resize_mode='longest'"):
    transforms.resize_center_crop(img, 2, resize_mode="longest")
  with pytest.raises(ValueError, match="interpolation='nearest'"):
    transforms.resize_center_crop(img, 2, interpolation="nearest")
