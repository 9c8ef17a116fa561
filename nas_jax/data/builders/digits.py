"""TFDS builder for scikit-learn's bundled 8x8 handwritten digits (no download)."""

from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

TEST_FRACTION = 0.2
SPLIT_SEED = 0


class NasJaxDigits(tfds.core.GeneratorBasedBuilder):
    """UCI optical digits as shipped in scikit-learn: 1,797 8x8 images, values 0..16.

    The data has no official split, so a fixed stratified 80/20 train/test split (seed 0) is
    made here; changing it requires a new VERSION.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "Stratified 80/20 split of sklearn.datasets.load_digits, seed 0."
    }

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="8x8 grayscale handwritten digits (UCI ML optical digits, sklearn copy).",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Everything is bundled with scikit-learn.
        from sklearn.datasets import load_digits

        from nas_jax.data.datasets import stratified_split

        digits = load_digits()
        images = digits.images.astype(np.uint8)[..., None]
        labels = digits.target.astype(np.int64)
        train_idx, test_idx = stratified_split(labels, TEST_FRACTION, SPLIT_SEED)
        return {
            "train": self._generate_examples(images[train_idx], labels[train_idx]),
            "test": self._generate_examples(images[test_idx], labels[test_idx]),
        }

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray):
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            yield i, {"image": image, "label": int(label)}
