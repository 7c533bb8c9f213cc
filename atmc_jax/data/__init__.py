"""Datasets: MNIST-format IDX files offline, tfds data sources online."""

from atmc_jax.data._idx import DEBIAN_FASHION_MNIST_DIR
from atmc_jax.data._idx import find_idx_dir
from atmc_jax.data._idx import load_idx_split
from atmc_jax.data._idx import read_idx
