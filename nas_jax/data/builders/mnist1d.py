"""MNIST-1D generated locally (never downloaded), as a TFDS builder and as plain arrays."""

import random
import types
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

# Generator settings of `mnist1d.data.get_dataset_args()` (minus the download url); the
# builder uses exactly these, `make_mnist1d(**overrides)` makes variants.
MNIST1D_DEFAULTS: dict = {
    "num_samples": 5000,
    "train_split": 0.8,
    "template_len": 12,
    "padding": (36, 60),
    "scale_coeff": 0.4,
    "max_translation": 48,
    "corr_noise_scale": 0.25,
    "iid_noise_scale": 2e-2,
    "shear_scale": 0.75,
    "shuffle_seq": False,
    "final_seq_length": 40,
    "seed": 42,
}


def make_mnist1d(**overrides) -> dict[str, np.ndarray]:
    """Generates MNIST-1D with `MNIST1D_DEFAULTS` updated by `overrides`, offline.

    numpy's and Python's global RNG states are restored afterwards (the generator reseeds both).

    Returns:
      `x` float32 [N_train, L], `y` int32 [N_train], `x_test`, `y_test`, `t` float32 [L]
      (the signal's time axis) and `templates` float32 [10, template_len].
    """
    unknown = sorted(set(overrides) - set(MNIST1D_DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown MNIST-1D setting(s) {unknown}; known: {', '.join(MNIST1D_DEFAULTS)}"
        )
    from mnist1d.data import make_dataset  # Imported lazily: it pulls in matplotlib.

    args = {**MNIST1D_DEFAULTS, **overrides}
    args["padding"] = list(args["padding"])
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(types.SimpleNamespace(**args))
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {
        "x": data["x"].astype(np.float32),
        "y": data["y"].astype(np.int32),
        "x_test": data["x_test"].astype(np.float32),
        "y_test": data["y_test"].astype(np.int32),
        "t": np.asarray(data["t"], np.float32),
        "templates": np.asarray(data["templates"]["x"], np.float32),
    }


class NasJaxMnist1d(tfds.core.GeneratorBasedBuilder):
    """MNIST-1D (Greydanus, 2020) with the default settings: 4,000 train, 1,000 test, length 40."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "make_dataset(get_dataset_args()) of mnist1d 0.0.2, seed 42."
    }

    def _info(self) -> tfds.core.DatasetInfo:
        length = MNIST1D_DEFAULTS["final_seq_length"]
        return tfds.core.DatasetInfo(
            builder=self,
            description="MNIST-1D: 1-D signals made from 10 digit templates, generated locally.",
            features=tfds.features.FeaturesDict(
                {
                    "signal": tfds.features.Tensor(shape=(length, 1), dtype=np.float32),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("signal", "label"),
            homepage="https://github.com/greydanus/mnist1d",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Generated, nothing to download.
        data = make_mnist1d()
        return {
            "train": self._generate_examples(data["x"], data["y"]),
            "test": self._generate_examples(data["x_test"], data["y_test"]),
        }

    def _generate_examples(self, signals: np.ndarray, labels: np.ndarray):
        for i, (signal, label) in enumerate(zip(signals, labels, strict=True)):
            yield i, {"signal": signal[:, None], "label": int(label)}
