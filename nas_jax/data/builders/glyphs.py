"""TFDS builder for the offline glyph dataset (`nas_jax.data.glyphs`): no download, no TF."""

import dataclasses
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from nas_jax.data import glyphs


@dataclasses.dataclass(eq=False)
class GlyphsConfig(tfds.core.BuilderConfig):
    """What to render: `scripts` (None: all of `glyphs.SCRIPTS`), `instances_per_style` jitter
    draws per style a character exists in, `min_styles` a character must exist in, `seed`."""

    scripts: tuple[str, ...] | None = None
    instances_per_style: int = 5
    min_styles: int = 4
    seed: int = 0


class NasJaxGlyphs(tfds.core.GeneratorBasedBuilder):
    """Letters of many scripts rendered from matplotlib's DejaVu fonts, 28x28 grayscale.

    Splits are class-disjoint like Omniglot's: `train` holds the classes of the meta-train
    scripts, `test` those of the meta-test scripts (`glyphs.SCRIPT_SPLIT`). Labels are global
    class ids (ordered by code point; names `U+XXXX`); `script` and `style` are ids into the
    names stored with the dataset and `glyphs.STYLES`.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "DejaVu letters of 11 scripts, >= 4 styles, 5 jittered instances per style."
    }
    BUILDER_CONFIGS: ClassVar[list[GlyphsConfig]] = [
        GlyphsConfig(name="default", description="All scripts, 5 instances per style.")
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        size = 28
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Few-shot glyphs: one class per letter of many scripts rendered from the "
                "DejaVu fonts bundled with matplotlib, instances from different styles with "
                "random affine jitter, stroke-width change and pixel noise."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(size, size, 1), dtype=np.uint8),
                    # Class and script names depend on the config and the fonts; they are set
                    # when the data is generated and restored from the prepared dataset.
                    "label": tfds.features.ClassLabel(),
                    "script": tfds.features.ClassLabel(),
                    "style": tfds.features.ClassLabel(
                        names=[name.removesuffix(".ttf") for name in glyphs.STYLES]
                    ),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://dejavu-fonts.github.io",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Rendered from fonts installed with matplotlib.
        config = self.builder_config
        data = glyphs.make_glyphs(
            scripts=None if config.scripts is None else tuple(config.scripts),
            instances_per_style=config.instances_per_style,
            min_styles=config.min_styles,
            seed=config.seed,
        )
        self.info.features["label"].names = [f"U+{cp:04X}" for cp in data["code_points"]]
        self.info.features["script"].names = list(data["script_names"])
        in_train = data["class_split"][data["label"]] == "train"
        if in_train.all() or not in_train.any():
            raise ValueError(
                f"GlyphsConfig.scripts={config.scripts} gives no meta-"
                f"{'test' if in_train.all() else 'train'} classes; include scripts of both "
                f"splits of nas_jax.data.glyphs.SCRIPT_SPLIT"
            )
        return {
            "train": self._generate_examples(data, np.flatnonzero(in_train)),
            "test": self._generate_examples(data, np.flatnonzero(~in_train)),
        }

    def _generate_examples(self, data: dict, indices: np.ndarray):
        for i in indices:
            yield (
                int(i),
                {
                    "image": data["image"][i],
                    "label": int(data["label"][i]),
                    "script": int(data["script"][i]),
                    "style": int(data["style"][i]),
                },
            )
