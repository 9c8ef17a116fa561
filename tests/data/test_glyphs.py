"""Tests for the offline glyph dataset, its TFDS builder and the few-shot class splits."""

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from nas_jax.data import builders, clear_cache, glyphs, load_dataset
from nas_jax.data.builders.glyphs import GlyphsConfig
from nas_jax.data.datasets import FEW_SHOT_DATASETS, few_shot_splits
from nas_jax.data.tasks import EpisodeSampler

SMALL = ("armenian", "lao")  # One meta-test and one meta-train script: 121 classes.
SMALL_COUNTS = {"armenian": 82, "lao": 39}  # Letters in >= 4 DejaVu styles, no duplicates.
PER_STYLE = 2


@pytest.fixture(scope="module")
def small():
    return glyphs.make_glyphs(scripts=SMALL, instances_per_style=PER_STYLE)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """`load_dataset('glyphs')` built with a small default config in a temporary data dir."""
    data_dir = str(tmp_path_factory.mktemp("glyph_tfds"))
    config = GlyphsConfig(name="default", scripts=SMALL, instances_per_style=PER_STYLE)
    clear_cache()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(builders.NasJaxGlyphs, "BUILDER_CONFIGS", [config])
        yield data_dir
    clear_cache()


def test_build_is_deterministic_and_seeded(small):
    glyphs.glyph_classes.cache_clear()  # Render the fonts again, not only re-jitter.
    again = glyphs.make_glyphs(scripts=SMALL, instances_per_style=PER_STYLE)
    for key in ("image", "label", "script", "style", "code_points", "class_split"):
        np.testing.assert_array_equal(again[key], small[key])
    other = glyphs.make_glyphs(scripts=SMALL, instances_per_style=PER_STYLE, seed=1)
    np.testing.assert_array_equal(other["label"], small["label"])
    assert np.mean(other["image"] != small["image"]) > 0.3


def test_class_counts_and_instances_per_style(small):
    classes = glyphs.glyph_classes(SMALL)
    assert small["script_names"] == SMALL
    counts = np.bincount(small["class_script"], minlength=len(SMALL))
    assert dict(zip(SMALL, counts.tolist(), strict=True)) == SMALL_COUNTS
    assert len(small["code_points"]) == sum(SMALL_COUNTS.values())
    assert np.all(np.diff(small["code_points"]) > 0)
    per_class = np.bincount(small["label"], minlength=len(small["code_points"]))
    np.testing.assert_array_equal(per_class, PER_STYLE * classes.styles.sum(axis=1))
    assert classes.styles.sum(axis=1).min() >= 4
    image = small["image"]
    assert image.shape == (len(small["label"]), 28, 28, 1) and image.dtype == np.uint8
    np.testing.assert_array_equal(small["script"], small["class_script"][small["label"]])
    assert np.all(classes.styles[small["label"], small["style"]])
    for cp in small["code_points"]:
        assert glyphs.script_of(int(cp)) in SMALL


def test_images_have_ink_and_classes_differ(small):
    assert np.all(small["image"].reshape(len(small["image"]), -1).max(axis=1) > 128)
    classes = glyphs.glyph_classes(SMALL)
    first = classes.styles.argmax(axis=1)
    masters = classes.masters[np.arange(len(first)), first].reshape(len(first), -1)
    masters = masters.astype(np.float64)
    for style in np.unique(first):
        group = masters[first == style]
        diff = np.abs(group[:, None] - group[None]).mean(axis=-1)
        np.fill_diagonal(diff, np.inf)
        assert diff.min() > glyphs.DUPLICATE_TOLERANCE


def test_homoglyphs_are_kept_once():
    classes = glyphs.glyph_classes(("greek", "cyrillic"))
    kept = set(classes.code_points.tolist())
    for greek, cyrillic in (("Α", "А"), ("Β", "В"), ("ο", "о")):
        assert ord(greek) in kept and ord(cyrillic) not in kept
    assert ord("Ж") in kept and ord("λ") in kept


def test_script_split_is_class_disjoint(small):
    split = glyphs.glyph_classes(SMALL).split_classes()
    assert np.intersect1d(split["train"], split["test"]).size == 0
    assert len(split["train"]) + len(split["test"]) == len(small["code_points"])
    names = small["script_names"]
    for part, ids in split.items():
        assert {glyphs.SCRIPT_SPLIT[names[s]] for s in small["class_script"][ids]} == {part}
    assert set(glyphs.SCRIPT_SPLIT) == set(glyphs.SCRIPTS)


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="'klingon'"):
        glyphs.check_scripts(("latin", "klingon"))
    with pytest.raises(ValueError, match="min_styles"):
        glyphs.glyph_classes(SMALL, min_styles=13)
    with pytest.raises(ValueError, match="instances_per_style"):
        glyphs.make_glyphs(scripts=SMALL, instances_per_style=0)
    with pytest.raises(ValueError, match="'glyph'"):
        few_shot_splits("glyph")
    with pytest.raises(ValueError, match="image_size must be 28 for glyphs"):
        few_shot_splits("glyphs", image_size=32)


def test_builder_refuses_a_config_without_meta_test_scripts(tmp_path):
    config = GlyphsConfig(name="lao_only", scripts=("lao",), instances_per_style=1)
    builder = builders.NasJaxGlyphs(config=config, data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="no meta-test classes"):
        builder.download_and_prepare(
            file_format="array_record",
            download_config=tfds.download.DownloadConfig(try_download_gcs=False),
        )


def test_tfds_builtin_matches_arrays_and_splits(prepared, small):
    ds = load_dataset("glyphs", data_dir=prepared, normalize=False, as_jax=False)
    assert ds.input_shape == (28, 28, 1) and ds.num_classes == len(small["code_points"])
    info = builders.prepare_builtin("glyphs", prepared).info
    assert info.features["script"].names == list(SMALL)
    assert info.features["label"].names[0] == f"U+{small['code_points'][0]:04X}"
    fs = few_shot_splits("glyphs", data_dir=prepared, normalize=False, as_jax=False)
    split = glyphs.glyph_classes(SMALL).split_classes()
    np.testing.assert_array_equal(fs.train_classes, split["train"])
    np.testing.assert_array_equal(fs.test_classes, split["test"])
    assert fs.num_classes == len(small["code_points"]) and fs.input_shape == (28, 28, 1)
    built_x = np.concatenate([fs.meta_train.x, fs.meta_test.x]).reshape(-1, 28 * 28)
    built_y = np.concatenate([fs.meta_train.y, fs.meta_test.y])
    order = np.lexsort(np.column_stack([built_y, built_x]).T[::-1])
    ref = np.column_stack([small["label"], small["image"].reshape(-1, 28 * 28)])
    ref = ref[np.lexsort(ref.T[::-1])]
    np.testing.assert_array_equal(np.column_stack([built_y, built_x])[order], ref)


def test_meta_train_episodes_never_contain_meta_test_classes(prepared):
    fs = few_shot_splits("glyphs", data_dir=prepared)
    sampler = EpisodeSampler.create(fs.meta_train, fs.train_classes, ways=5, shots=1, queries=2)
    with jax.threefry_partitionable(False):  # Compiles faster on CPU.
        episodes = jax.jit(lambda s, k: s.sample_batch(k, 16))(sampler, jax.random.key(0))
    classes = np.asarray(episodes.classes)
    assert np.isin(classes, fs.train_classes).all() and not np.isin(classes, fs.test_classes).any()
    x, y = np.asarray(fs.meta_train.x).reshape(len(fs.meta_train), -1), np.asarray(fs.meta_train.y)
    label_of = {row.tobytes(): label for row, label in zip(x, y, strict=True)}
    support = np.asarray(episodes.support_x).reshape(16, 5, -1)
    for b in range(16):
        for way in range(5):
            assert label_of[support[b, way].tobytes()] == classes[b, way]


def test_omniglot_rotations_give_four_times_the_classes(tmp_path):
    assert FEW_SHOT_DATASETS == ("glyphs", "omniglot")
    clear_cache()
    with tfds.testing.mock_data(num_examples=12):
        plain = few_shot_splits("omniglot", data_dir=tmp_path, rotations=False, as_jax=False)
        fs = few_shot_splits("omniglot", data_dir=tmp_path, normalize=True, as_jax=False)
    clear_cache()
    assert fs.input_shape == (28, 28, 1) and plain.num_classes == 1623
    assert fs.num_classes == 4 * 1623
    for rotated, base in ((fs.meta_train, plain.meta_train), (fs.meta_test, plain.meta_test)):
        n = len(base)
        assert len(rotated) == 4 * n
        for k in range(4):
            np.testing.assert_array_equal(rotated.y[k * n : (k + 1) * n], base.y + k * 1623)
            np.testing.assert_allclose(
                rotated.x[k * n : (k + 1) * n], np.rot90(base.x, k, axes=(1, 2)), atol=1e-6
            )
    assert len(fs.train_classes) == 4 * len(plain.train_classes)
    assert len(fs.test_classes) == 4 * len(plain.test_classes)
