"""Datasets (offline TFDS built-ins and catalog datasets) and meta-learning task sampling."""

from nas_jax.data import builders
from nas_jax.data.builders import MNIST1D_DEFAULTS, make_mnist1d, prepare_builtin
from nas_jax.data.datasets import (
    BUILTIN_DATASETS,
    CATALOG_DATASETS,
    KNOWN_DATASETS,
    Dataset,
    DatasetNotPreparedError,
    Split,
    check_dataset_name,
    clear_cache,
    dataset_from_arrays,
    load_dataset,
    resolve_data_dir,
    stratified_split,
)
from nas_jax.data.tasks import (
    ClassSubsetTasks,
    Episode,
    EpisodeSampler,
    class_index_table,
    make_class_subset_tasks,
    make_episode_samplers,
    split_classes,
)

__all__ = [
    "BUILTIN_DATASETS",
    "CATALOG_DATASETS",
    "KNOWN_DATASETS",
    "MNIST1D_DEFAULTS",
    "ClassSubsetTasks",
    "Dataset",
    "DatasetNotPreparedError",
    "Episode",
    "EpisodeSampler",
    "Split",
    "builders",
    "check_dataset_name",
    "class_index_table",
    "clear_cache",
    "dataset_from_arrays",
    "load_dataset",
    "make_class_subset_tasks",
    "make_episode_samplers",
    "make_mnist1d",
    "prepare_builtin",
    "resolve_data_dir",
    "split_classes",
    "stratified_split",
]
