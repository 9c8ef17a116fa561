"""Offline TFDS builders for the built-in datasets, and their cached, lock-protected preparation.

Importing this package registers `nas_jax_digits`, `nas_jax_mnist1d` and `nas_jax_glyphs` with
TFDS, so `tfds.builder('nas_jax_digits', data_dir=...)` works like a catalog dataset.
"""

import fcntl
import os
from pathlib import Path

import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import gcs_utils

from nas_jax.data.builders.digits import NasJaxDigits
from nas_jax.data.builders.glyphs import GlyphsConfig, NasJaxGlyphs
from nas_jax.data.builders.mnist1d import MNIST1D_DEFAULTS, NasJaxMnist1d, make_mnist1d

# TFDS 4.9.10 already defaults to this; set it so no version of TFDS looks up GCS metadata.
gcs_utils._is_gcs_disabled = True

BUILDERS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
    "digits": NasJaxDigits,
    "mnist1d": NasJaxMnist1d,
    "glyphs": NasJaxGlyphs,
}

__all__ = [
    "BUILDERS",
    "MNIST1D_DEFAULTS",
    "GlyphsConfig",
    "NasJaxDigits",
    "NasJaxGlyphs",
    "NasJaxMnist1d",
    "make_mnist1d",
    "prepare_builtin",
]


def prepare_builtin(name: str, data_dir: str | os.PathLike) -> tfds.core.DatasetBuilder:
    """Returns the prepared builder of built-in dataset `name`, generating it once if needed.

    Generation holds an exclusive file lock in `data_dir`, so concurrent processes build the
    dataset once and the others wait and reuse it; TFDS itself writes into a temporary
    directory and renames it, so a crashed build leaves no half-written dataset behind.
    """
    cls = BUILDERS[name]
    root = Path(data_dir).expanduser()
    builder = cls(data_dir=os.fspath(root), file_format="array_record")
    if builder.is_prepared():
        return builder
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{cls.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        builder = cls(data_dir=os.fspath(root), file_format="array_record")
        if not builder.is_prepared():
            builder.download_and_prepare(
                file_format="array_record",
                download_config=tfds.download.DownloadConfig(try_download_gcs=False),
            )
    return builder
