import numpy as np
import pytest

from clipjax import tree as tree_lib

PARAMS = {
  "visual": {"blocks": {"0": {"attn": {"kernel": np.ones(2), "bias": np.zeros(2)}}}},
  "text": {"token_embedding": np.ones(3)},
  "logit_scale": np.float32(1.0),
}


def test_names_and_roundtrip():
  flat = dict(tree_lib.flatten_with_names(PARAMS))
  assert set(flat) == {
    "visual/blocks/0/attn/kernel",
    "visual/blocks/0/attn/bias",
    "text/token_embedding",
    "logit_scale",
  }
  back = tree_lib.unflatten_names(flat)
  assert tree_lib.names(back) == tree_lib.names(PARAMS)


def test_match_mask_fullmatch():
  mask = tree_lib.match_mask(PARAMS, [r"visual/.*/bias", "logit_scale"])
  assert mask["visual"]["blocks"]["0"]["attn"]["bias"] is True
  assert mask["visual"]["blocks"]["0"]["attn"]["kernel"] is False
  assert mask["logit_scale"] is True
  # fullmatch: "text" alone must not match "text/token_embedding"
  assert tree_lib.match_mask(PARAMS, "text", strict=False)["text"]["token_embedding"] is False


def test_match_mask_strict_names_unused_pattern():
  with pytest.raises(ValueError, match=r"visul/\.\*"):
    tree_lib.match_mask(PARAMS, ["visul/.*"])


def test_unflatten_conflict():
  with pytest.raises(ValueError, match="conflicts"):
    tree_lib.unflatten_names({"a": 1, "a/b": 2})
