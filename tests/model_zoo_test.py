"""Every packed model under models/ matches its card on the test images.

A model ``models/<name>.atmc`` comes with its card ``models/<name>.json``
(``experiments.export --card``); the check measures the model's accuracy on
the card's first test images (1,000) and compares it with the accuracy the
card recorded at export time and with the stage's TA. Skipped when
``models/`` holds no packed model or the dataset is absent.
"""

import glob
import os
import pathlib

from atmc_jax import data
from experiments import export as export_cli
import pytest

MODELS_DIR = pathlib.Path(__file__).resolve().parent.parent / 'models'


def packed_models() -> list[str]:
  """The packed files under ``models/``, sorted."""
  return sorted(glob.glob(str(MODELS_DIR / '*.atmc')))


def _test_split(dataset):
  try:
    return data.load_split(dataset, 'test')
  except (ValueError, OSError, ImportError) as e:
    pytest.skip(f'{dataset} test split absent: {e}')


@pytest.mark.skipif(not packed_models(), reason='models/ holds no *.atmc')
@pytest.mark.parametrize('path', packed_models(), ids=os.path.basename)
def test_model_matches_its_card(path):
  from atmc_jax import export  # pylint: disable=g-import-not-at-top
  dataset = export.read_header(path)['metadata'].get('dataset')
  images, labels = _test_split(dataset)
  checked = export_cli.verify_card(path, images, labels)
  assert checked['measured'] == pytest.approx(checked['recorded'], abs=2e-3)
