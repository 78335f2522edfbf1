import importlib

import pytest

from clipjax import main


@pytest.mark.parametrize("task", sorted(main.TASKS))
def test_every_task_module_has_run(task):
  module = importlib.import_module(main.TASKS[task])
  assert callable(module.run)
