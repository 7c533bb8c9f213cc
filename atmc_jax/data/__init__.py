"""Datasets and input pipeline.

MNIST-format IDX files offline, tfds data sources (no TensorFlow) otherwise;
deterministic, resumable, multi-process batching with NumPy augmentation.
"""

from atmc_jax.data._datasets import AUGMENTATIONS
from atmc_jax.data._datasets import DATASETS
from atmc_jax.data._datasets import DatasetSpec
from atmc_jax.data._datasets import get_dataset_spec
from atmc_jax.data._datasets import load_split
from atmc_jax.data._datasets import locate_split
from atmc_jax.data._datasets import train_val_split
from atmc_jax.data._idx import cache_dir
from atmc_jax.data._idx import DEBIAN_FASHION_MNIST_DIR
from atmc_jax.data._idx import find_idx_dir
from atmc_jax.data._idx import has_idx_split
from atmc_jax.data._idx import load_idx_split
from atmc_jax.data._idx import read_idx
from atmc_jax.data._pipeline import BatchIterator
from atmc_jax.data._pipeline import augment_batch
from atmc_jax.data._pipeline import epoch_permutation
from atmc_jax.data._pipeline import iterate_batches
from atmc_jax.data._pipeline import num_batches
from atmc_jax.data._pipeline import prefetch
from atmc_jax.data._tfds import load_tfds_split
from atmc_jax.data._tfds import read_data_source
