"""The entry points' log filter: project lines and errors pass, libraries not."""

import logging as std_logging
import os

import atmc_jax
from experiments import _logs


def _record(path, level=std_logging.INFO):
  return std_logging.LogRecord('absl', level, path, 1, 'msg', None, None)


def test_project_lines_pass_library_lines_do_not():
  keep = _logs.ProjectOnly()
  loop = os.path.join(os.path.dirname(atmc_jax.__file__), 'training',
                      '_loop.py')
  assert keep.filter(_record(loop))
  assert keep.filter(_record(_logs.__file__, std_logging.WARNING))
  orbax_file = os.path.join('site-packages', 'orbax', 'checkpoint',
                            'checkpoint_manager.py')
  assert not keep.filter(_record(orbax_file))
  assert not keep.filter(_record(orbax_file, std_logging.WARNING))
  assert keep.filter(_record(orbax_file, std_logging.ERROR))


def test_quiet_libraries_installs_the_filter_once():
  from absl import logging  # pylint: disable=g-import-not-at-top
  handler = logging.get_absl_handler()
  before = list(handler.filters)
  try:
    _logs.quiet_libraries(False)
    assert handler.filters == before
    _logs.quiet_libraries()
    _logs.quiet_libraries()
    assert sum(isinstance(f, _logs.ProjectOnly)
               for f in handler.filters) == 1
  finally:
    handler.filters[:] = before
