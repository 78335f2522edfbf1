"""Every shipped config builds, in full and :smoke form, for a task the CLI knows."""

import glob
import os

import pytest

from clipjax import config_lib, tasks

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))


def _load(path):
  return config_lib.load_module(path)


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
@pytest.mark.parametrize("arg", [None, "smoke"])
def test_config_builds(path, arg):
  module = _load(path)
  assert module.__doc__, f"{path} needs a docstring with its command"
  config = module.get_config(arg)
  assert config.get("task", "train") in tasks.TASKS
  config.lock()
  with pytest.raises(AttributeError):
    config.no_such_key_anywhere = 1


def test_smoke_arg_typo_is_an_error():
  with pytest.raises(ValueError, match="Did you mean 'smoke'"):
    _load(os.path.join(REPO, "configs", "quickstart.py")).get_config("smok")


def test_load_takes_the_config_flag_form(tmp_path):
  """`config_lib.load("path:arg")` is what `--config path:arg` builds; bad files are named."""
  c = config_lib.load(os.path.join(REPO, "configs", "base.py:seed=3,smoke"))
  assert c.seed == 3 and c.total_steps == 4
  assert config_lib.load(os.path.join(REPO, "configs", "base.py")).seed == 0
  with pytest.raises(FileNotFoundError, match="nope.py"):
    config_lib.load(str(tmp_path / "nope.py:smoke"))
  (tmp_path / "empty.py").write_text("X = 1\n")
  with pytest.raises(AttributeError, match=r"empty\.py.*get_config"):
    config_lib.load(str(tmp_path / "empty.py"))
