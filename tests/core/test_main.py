import importlib

import pytest

from clipjax import tasks


@pytest.mark.parametrize("task", sorted(tasks.TASKS))
def test_every_task_module_has_run(task):
  module = importlib.import_module(tasks.TASKS[task])
  assert callable(module.run)
