"""The README's "compose it in your own loop" example runs as written."""

import os
import pathlib
import re

from atmc_jax import data
import pytest

README = pathlib.Path(__file__).resolve().parent.parent / 'README.md'


def _python_blocks(text):
  return re.findall(r'```python\n(.*?)```', text, flags=re.DOTALL)


def test_readme_has_one_python_example():
  assert len(_python_blocks(README.read_text())) == 1


@pytest.mark.skipif(
    data.find_idx_dir() is None
    or not os.path.exists(os.path.join(data.find_idx_dir(),
                                       'train-images-idx3-ubyte.gz')),
    reason='Fashion-MNIST IDX files absent (apt-get install '
           'dataset-fashion-mnist)')
def test_readme_example_runs(capsys):
  (block,) = _python_blocks(README.read_text())
  namespace = {'__name__': '__readme__'}
  exec(compile(block, str(README), 'exec'), namespace)  # pylint: disable=exec-used
  # The example asserts feasibility itself; check it printed its summary.
  assert '<=' in capsys.readouterr().out
  assert namespace['stats']['nnz'] <= namespace['budget']
