"""atmc_jax.export: the compressed model as one file, loadable with NumPy.

:func:`save` writes a packed file (positions, bit-packed codes, codebooks;
see ``_format``) whose size is the paper's accounted size plus the
indices, the uncompressed tensors and a small header. :func:`load`,
:func:`size_report` and the NumPy forward passes need only NumPy: the
modules ``_format.py``, ``_numpy_models.py`` and ``_torch_layout.py``
import nothing else and can be loaded by file path where JAX is absent
(importing ``atmc_jax.export`` itself imports JAX).
"""

from atmc_jax.export._format import format_size_report
from atmc_jax.export._format import load
from atmc_jax.export._format import LoadedModel
from atmc_jax.export._format import read_header
from atmc_jax.export._format import size_report
from atmc_jax.export._model_card import card_paths
from atmc_jax.export._model_card import write_model_card
from atmc_jax.export._numpy_models import lenet_logits
from atmc_jax.export._numpy_models import logits
from atmc_jax.export._save import save
from atmc_jax.export._torch_layout import lenet_flatten_shapes
from atmc_jax.export._torch_layout import to_torch_layout

NUMPY_ONLY_MODULES = ('_format.py', '_numpy_models.py', '_torch_layout.py')
