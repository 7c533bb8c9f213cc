"""``import atmc_jax`` and its library layers stay light.

attacks, projections, optim, models, data and export import neither orbax
(checkpoints), tensorflow_datasets, tqdm nor ml_collections; only
``atmc_jax.training`` does, and it loads on first access.
"""

import os
import subprocess
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_HEAVY = ('orbax', 'tensorflow_datasets', 'tensorflow', 'tqdm',
          'ml_collections')

_SCRIPT = f'''
import sys
import atmc_jax
from atmc_jax import attacks, data, export, models, optim, projections
heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({_HEAVY!r}))
assert not heavy, heavy
assert 'atmc_jax.training' not in sys.modules
assert atmc_jax.train_and_evaluate is atmc_jax.training.train_and_evaluate
assert 'orbax' in sys.modules and 'ml_collections' in sys.modules
print('ok')
'''


def test_library_layers_do_not_import_training_dependencies():
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=os.pathsep.join(
      [_ROOT] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
  proc = subprocess.run([sys.executable, '-c', _SCRIPT], cwd=_ROOT, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip() == 'ok'
