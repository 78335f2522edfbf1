import ml_collections as mlc
import pytest

from clipjax import config_lib


def test_parse_arg_types_and_flags():
  arg = config_lib.parse_arg(
    "smoke,steps=10,lr=0.5,name=B/32", smoke=False, steps=1, lr=1.0, name="x"
  )
  assert arg.smoke is True and arg.steps == 10 and arg.lr == 0.5 and arg.name == "B/32"
  assert config_lib.parse_arg(None, smoke=False).smoke is False


def test_parse_arg_unknown_key_suggests():
  with pytest.raises(ValueError, match="Did you mean 'smoke'"):
    config_lib.parse_arg("smok", smoke=False)


def test_parse_arg_type_errors():
  with pytest.raises(ValueError, match="expects a number"):
    config_lib.parse_arg("steps=abc", steps=1)
  with pytest.raises(ValueError, match="needs a value"):
    config_lib.parse_arg("steps", steps=1)


def test_diff_configs():
  old = {"a": {"b": 1}, "c": 2}
  new = {"a": {"b": 3}, "c": 2}
  assert config_lib.diff_configs(old, new, ["a.b", "c", "missing"]) == ["a.b: 1 -> 3"]
  nested_old = {"optim": {"lr": 0.1, "b1": 0.9}}
  nested_new = {"optim": {"lr": 0.2, "b1": 0.9, "new": 1}}
  assert config_lib.diff_configs(nested_old, nested_new, ["optim"]) == [
    "optim.lr: 0.1 -> 0.2",
    "optim.new: None -> 1",
  ]


def test_validate_names_offending_key():
  c = mlc.ConfigDict(
    {
      "total_steps": 10,
      "data": {"batch_size": 10},
      "optim": {"grad_accum_steps": 1, "warmup_frac": 0.1},
    }
  )
  with pytest.raises(ValueError, match="divisible by the number of devices"):
    config_lib.validate_train_config(c, num_devices=8)
  config_lib.validate_train_config(c, num_devices=2)


@pytest.mark.parametrize("world", sorted(config_lib.SHAPES_WORLDS))
def test_shapes_worlds_build_and_captions_fit_the_context(world):
  from clipjax.data import registry
  from clipjax.data.tokenizer import Tokenizer

  length = config_lib.shapes_context_length(world)
  tok = Tokenizer.default()
  for split in ("train", "test"):
    src = registry.build_source(config_lib.shapes_world(world, split), 32)
    captions = [src.get_text(i)["caption"] for i in range(300)]
    # Untruncated token counts (sot + text + eot) never exceed the configured context.
    assert max(len(tok.encode(c)) + 2 for c in captions) <= length, world
  with pytest.raises(ValueError, match="valid worlds"):
    config_lib.shapes_world("shape", "train")
