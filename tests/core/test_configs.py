"""Every shipped config builds, in full and :smoke form, for a task the CLI knows."""

import glob
import importlib.util
import os

import pytest

from clipjax import tasks

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))


def _load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


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
