"""Command-line errors: one line on stderr naming the key, file or value."""

import os
import subprocess
import sys

import pytest

from experiments import evaluate_attacks

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env['PYTHONPATH'] = os.pathsep.join(
      [_ROOT] + [p for p in [env.get('PYTHONPATH')] if p])
  return subprocess.run([sys.executable, '-m', *args], capture_output=True,
                        text=True, cwd=_ROOT, env=env, timeout=300)


@pytest.mark.parametrize('module,config', [
    ('experiments.train', 'experiments/configs/default.py'),
    ('experiments.reproduce', 'experiments/configs/fmnist_quick.py'),
])
@pytest.mark.parametrize('override,key', [
    ('--config.foo=1', 'foo'),
    ('--config.model_kwargs.x=1', 'model_kwargs.x'),
])
def test_unknown_config_key_is_one_line(tmp_path, module, config, override,
                                        key):
  if module.endswith('reproduce') and key.startswith('model_kwargs'):
    override, key = '--config.base.nope=1', 'base.nope'
  proc = _run(module, '--config', config, '--workdir', str(tmp_path / 'w'),
              override)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert lines[-1] == (f'error: {override}: unknown config key {key!r} (a '
                       '--config.KEY flag can only set a key the config '
                       'file defines).'), proc.stderr
  assert 'Traceback' not in proc.stderr
  assert not os.path.exists(tmp_path / 'w')


@pytest.mark.parametrize('module', ['experiments.train',
                                    'experiments.reproduce'])
def test_missing_config_file_is_one_line(tmp_path, module):
  proc = _run(module, '--config', 'experiments/configs/nope.py',
              '--workdir', str(tmp_path / 'w'))
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: --config='experiments/configs/nope.py': cannot load the config "
      "file (No such file or directory: 'experiments/configs/nope.py').")
  assert 'Traceback' not in proc.stderr


def test_unsafe_allow_config_change_is_refused_at_parse_time(tmp_path):
  proc = _run('experiments.train', '--config',
              'experiments/configs/default.py', '--workdir',
              str(tmp_path / 'w'), '--allow_config_change=learning_rate')
  assert proc.returncode != 0
  assert 'accepted: any of num_epochs' in proc.stderr
  assert 'Traceback' not in proc.stderr


def test_evaluate_attacks_max_examples_zero_is_an_error(tmp_path):
  proc = _run('experiments.evaluate_attacks', '--workdir', str(tmp_path),
              '--max_examples', '0')
  assert proc.returncode != 0
  assert ("--max_examples=0 is invalid; accepted: an integer >= 1, or 'all'"
          in proc.stderr)
  assert 'Traceback' not in proc.stderr


@pytest.mark.parametrize('value,expected', [('all', None), ('ALL', None),
                                            ('1', 1), ('500', 500)])
def test_parse_max_examples(value, expected):
  assert evaluate_attacks.parse_max_examples(value) == expected


@pytest.mark.parametrize('value', ['0', '-3', 'x', ''])
def test_parse_max_examples_rejects(value):
  with pytest.raises(ValueError, match=rf'--max_examples={value} is invalid'):
    evaluate_attacks.parse_max_examples(value)
