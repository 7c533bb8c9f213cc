"""Flag parsing of the command-line entry points: config errors in one line.

``ml_collections.config_flags`` reports an unknown ``--config.<key>`` with a
traceback from inside absl's flag parsing, and a missing config file only
when the config is first read (a traceback from ``main``). :func:`parse_flags`
(the ``flags_parser`` of ``app.run``) turns both into one line on stderr
naming the key or the file, and exits with status 2.
"""

import re
import sys
from typing import Sequence

from absl import app
from absl import flags
from ml_collections import config_flags


def _overrides(argv: Sequence[str], name: str) -> list[tuple[str, str]]:
  """``(dotted key, argument)`` of every ``--<name>.<key>`` in ``argv``."""
  out = []
  for arg in argv:
    m = re.match(rf'^--?{re.escape(name)}\.([^=]+)', arg)
    if m:
      out.append((m.group(1), arg))
  return out


def _fail(message: str) -> None:
  sys.stderr.write(f'error: {message}\n')
  sys.exit(2)


def parse_flags(argv: Sequence[str], config_flag: str = 'config'
                ) -> list[str]:
  """Parses ``argv`` like absl, and loads the config file eagerly.

  Args:
    argv: the command line.
    config_flag: the name of the ``config_flags.DEFINE_config_file`` flag.

  Returns:
    The remaining arguments, as ``app.parse_flags_with_usage`` returns them.
  """
  try:
    rest = app.parse_flags_with_usage(list(argv))
  except (KeyError, AttributeError) as e:
    missing = re.findall(r"'([^'\s]+)'", str(e))
    missing = missing[0] if missing else ''
    for key, arg in _overrides(argv, config_flag):
      if missing in key.split('.'):
        _fail(f'{arg}: unknown config key {key!r} (a --{config_flag}.KEY '
              'flag can only set a key the config file defines).')
    _fail(f'unknown config key {missing!r} in '
          f'{" ".join(a for _, a in _overrides(argv, config_flag))}.')
  try:
    getattr(flags.FLAGS, config_flag).get('')  # Raises if it did not load.
  except Exception as e:  # pylint: disable=broad-except
    try:
      path = config_flags.get_config_filename(flags.FLAGS[config_flag])
    except Exception:  # pylint: disable=broad-except
      path = None
    reasons = re.findall(r'\[Errno \d+\] ([^\n]+)', str(e))
    reason = reasons[0] if reasons else (
        f'{type(e).__name__}: {str(e).strip().splitlines()[-1]}'
        if str(e).strip() else type(e).__name__)
    _fail(f'--{config_flag}={path!r}: cannot load the config file '
          f'({reason}).')
  return rest
