import importlib
import os
import subprocess
import sys

import pytest

from clipjax import config_lib, tasks

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("task", sorted(tasks.TASKS))
def test_every_task_module_has_run(task):
  module = importlib.import_module(tasks.TASKS[task])
  assert callable(module.run)


def test_unknown_key_names_the_closest_and_the_valid_keys():
  c = config_lib.train_config()
  assert config_lib.unknown_key(c, "optim.lr") is None
  why = config_lib.unknown_key(c, "optim.lrr")
  assert why.startswith("unknown config key 'optim.lrr'; closest: lr,")
  assert "Valid keys in optim: b1, b2, clip_grad_norm" in why
  far = config_lib.unknown_key(c, "zzzqqq")  # however far off, the closest keys are named
  assert "closest: " in far and "Valid keys in the config: checkpoint, data," in far
  assert "'seed' is a value (int)" in config_lib.unknown_key(c, "seed.x")


def test_cli_config_key_typo_is_one_short_message(tmp_path):
  proc = subprocess.run(
    [
      sys.executable, "-m", "clipjax.main", "--config",
      os.path.join(REPO, "configs", "quickstart.py:smoke"), "--workdir", str(tmp_path / "w"),
      "--config.optim.lrr=1",
    ],
    capture_output=True, text=True, timeout=300,
  )  # fmt: skip
  assert proc.returncode != 0
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith("--config.optim.lrr=1: unknown config key 'optim.lrr'; closest: lr")
  assert not (tmp_path / "w").exists()
