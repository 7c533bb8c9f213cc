"""Quiet logs for the command-line entry points.

By default a run shows the project's own log lines (epoch and test
summaries, warnings) and its progress bars; the INFO and WARNING lines of
the libraries underneath (orbax's checkpoint internals, etils, ...) are
dropped. Errors always pass. ``--library_logs`` brings everything back.
"""

import importlib.util
import logging as std_logging
import os

from absl import logging

_PROJECT_DIRS = tuple(
    os.path.abspath(d) + os.sep for d in (
        importlib.util.find_spec('atmc_jax').submodule_search_locations[0],
        os.path.dirname(__file__)))


class ProjectOnly(std_logging.Filter):
  """Keeps the records logged from atmc_jax/ or experiments/, and errors."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno >= std_logging.ERROR:
      return True
    path = os.path.abspath(record.pathname)
    return path.startswith(_PROJECT_DIRS)


def quiet_libraries(enabled: bool = True) -> None:
  """Drops the libraries' INFO/WARNING lines from absl's log handler."""
  if not enabled:
    return
  handler = logging.get_absl_handler()
  if not any(isinstance(f, ProjectOnly) for f in handler.filters):
    handler.addFilter(ProjectOnly())
