"""Load whole datasets into memory as float32 features and int32 labels, offline.

Built-ins (`digits`, `mnist1d`, `glyphs`) are generated locally by TFDS builders on first use;
catalog datasets must have been prepared beforehand in array_record format. Nothing here
downloads. `few_shot_splits` gives the class-disjoint meta-train/meta-test data of `glyphs` and
`omniglot`.
"""

import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

BUILTIN_DATASETS = ("digits", "mnist1d", "glyphs")
CATALOG_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "svhn_cropped", "omniglot")
KNOWN_DATASETS = BUILTIN_DATASETS + CATALOG_DATASETS
DATA_DIR_ENV = "NAS_JAX_DATA_DIR"
DEFAULT_BUILTIN_DATA_DIR = "~/.cache/nas_jax/tfds"

_FEATURE_KEY = {"mnist1d": "signal"}  # Everything else stores its input as "image".


class DatasetNotPreparedError(FileNotFoundError):
    """A catalog dataset has no array_record files in the data dir (nas_jax never downloads)."""


@flax.struct.dataclass
class Split:
    """One split: `x` float32 [N, *input_shape], `y` int32 [N] (jax arrays or numpy)."""

    x: jax.Array | np.ndarray
    y: jax.Array | np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])


@flax.struct.dataclass
class Dataset:
    """A dataset held in memory; `mean`/`std` (numpy float32 [C]) undo normalisation."""

    train: Split
    valid: Split
    test: Split
    mean: np.ndarray
    std: np.ndarray
    name: str = flax.struct.field(pytree_node=False)
    num_classes: int = flax.struct.field(pytree_node=False)
    input_shape: tuple[int, ...] = flax.struct.field(pytree_node=False)


def check_dataset_name(name: str) -> str:
    """Returns `name` if it is a known dataset; raises ValueError listing the known ones."""
    if name not in KNOWN_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(KNOWN_DATASETS)}")
    return name


def resolve_data_dir(name: str, data_dir: str | os.PathLike | None = None) -> str | None:
    """Returns the TFDS data dir used for `name`.

    Order: the explicit `data_dir`; else `$NAS_JAX_DATA_DIR`; else `~/.cache/nas_jax/tfds` for
    built-ins and None (TFDS's own default: `$TFDS_DATA_DIR` or `~/tensorflow_datasets`) for
    catalog datasets, so datasets prepared with a plain `tfds build` are found.
    """
    chosen = data_dir or os.environ.get(DATA_DIR_ENV)
    if not chosen and name in BUILTIN_DATASETS:
        chosen = DEFAULT_BUILTIN_DATA_DIR
    return os.fspath(Path(chosen).expanduser()) if chosen else None


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Splits indices into (kept, held out) with `round(fraction * N)` held out, per class.

    Each class contributes `floor(fraction * count)` held-out examples; the remaining ones go
    to the classes with the largest remainders (ties broken by `seed`). Which examples of a
    class are held out is a seeded permutation. Both index arrays are sorted.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    target = fraction * counts
    quota = np.floor(target).astype(np.int64)
    extra = round(fraction * len(labels)) - int(quota.sum())
    if extra > 0:
        order = np.lexsort((rng.random(len(classes)), -(target - quota)))
        quota[order[:extra]] += 1
    grouped = perm[np.argsort(labels[perm], kind="stable")]
    starts = np.searchsorted(labels[grouped], classes)
    held = np.zeros(len(labels), bool)
    for start, take in zip(starts, quota, strict=True):
        held[grouped[start : start + take]] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


def dataset_from_arrays(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    num_classes: int | None = None,
    valid_fraction: float = 0.1,
    seed: int = 0,
    normalize: bool = True,
    as_jax: bool = True,
) -> Dataset:
    """Builds a `Dataset` from in-memory arrays (e.g. a `make_mnist1d` variant).

    The valid split is a stratified `valid_fraction` of the train arrays chosen by `seed`;
    normalisation uses the per-channel (last axis) mean/std of the remaining train split.
    """
    x_train, x_test = np.asarray(x_train, np.float32), np.asarray(x_test, np.float32)
    y_train, y_test = np.asarray(y_train, np.int32), np.asarray(y_test, np.int32)
    if num_classes is None:
        num_classes = int(max(y_train.max(initial=-1), y_test.max(initial=-1))) + 1
    keep, held = stratified_split(y_train, valid_fraction, seed)
    splits = {
        "train": (x_train[keep], y_train[keep]),
        "valid": (x_train[held], y_train[held]),
        "test": (x_test, y_test),
    }
    channels = x_train.shape[-1]
    mean, std = np.zeros(channels, np.float32), np.ones(channels, np.float32)
    if normalize:
        flat = splits["train"][0].reshape(-1, channels).astype(np.float64)
        mean = flat.mean(axis=0).astype(np.float32)
        std = flat.std(axis=0).astype(np.float32)
        std[std == 0] = 1.0
    convert = jnp.asarray if as_jax else _read_only
    made = {
        key: Split(x=convert((x - mean) / std if normalize else x), y=convert(y))
        for key, (x, y) in splits.items()
    }
    return Dataset(
        name=name,
        num_classes=int(num_classes),
        input_shape=tuple(x_train.shape[1:]),
        mean=_read_only(mean),
        std=_read_only(std),
        **made,
    )


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    valid_fraction: float = 0.1,
    seed: int = 0,
    normalize: bool = True,
    as_jax: bool = True,
    image_size: int | None = None,
) -> Dataset:
    """Loads dataset `name` (one of `KNOWN_DATASETS`) into memory, without any download.

    Results are memoised per process on all arguments (`clear_cache()` forgets them).

    Args:
      name: a built-in (`digits`, `mnist1d`, `glyphs`; generated on first use) or a catalog dataset
        prepared with `tfds build NAME --file_format=array_record`.
      data_dir: TFDS data dir; default from `resolve_data_dir`.
      valid_fraction: stratified fraction of the train split held out as `valid`, by `seed`.
      normalize: standardise per channel with the train split's mean/std; otherwise the raw
        values (0..255 for images, 0..16 for digits) are only cast to float32.
      as_jax: put splits on the default device as jax arrays; numpy (read-only) otherwise.
      image_size: omniglot only: resize the (grayscale) 105x105 images to this square size
        (28 is customary); None keeps 105.

    Raises:
      ValueError: unknown name, or `image_size` given for a dataset other than omniglot.
      DatasetNotPreparedError: a catalog dataset is not prepared in array_record format.
    """
    check_dataset_name(name)
    if image_size is not None and name != "omniglot":
        raise ValueError(f"image_size is only supported for omniglot, not {name!r}")
    return _load(
        name,
        resolve_data_dir(name, data_dir),
        float(valid_fraction),
        int(seed),
        bool(normalize),
        bool(as_jax),
        None if image_size is None else int(image_size),
    )


def clear_cache() -> None:
    """Forgets the memoised datasets (and the raw arrays read from disk)."""
    _load.cache_clear()
    _read_arrays.cache_clear()


@functools.lru_cache(maxsize=16)
def _load(name, data_dir, valid_fraction, seed, normalize, as_jax, image_size) -> Dataset:
    x_train, y_train, x_test, y_test, num_classes = _read_arrays(name, data_dir, image_size)
    return dataset_from_arrays(
        name,
        x_train,
        y_train,
        x_test,
        y_test,
        num_classes=num_classes,
        valid_fraction=valid_fraction,
        seed=seed,
        normalize=normalize,
        as_jax=as_jax,
    )


@functools.lru_cache(maxsize=4)
def _read_arrays(name: str, data_dir: str | None, image_size: int | None):
    """Reads train and test of `name` as (x_train, y_train, x_test, y_test, num_classes)."""
    import tensorflow_datasets as tfds

    if name in BUILTIN_DATASETS:
        from nas_jax.data.builders import prepare_builtin

        builder = prepare_builtin(name, data_dir)
        cached = _cached_arrays(builder)
        if cached is not None:
            return (*cached, builder.info.features["label"].num_classes)
        sources = builder.as_data_source(split=["train", "test"])
    else:
        builder = tfds.builder(name, data_dir=data_dir)
        try:
            sources = builder.as_data_source(split=["train", "test"])
        except (NotImplementedError, OSError) as err:
            raise DatasetNotPreparedError(_not_prepared_message(builder, data_dir)) from err
    convert = _omniglot_converter(image_size) if name == "omniglot" else None
    key = _FEATURE_KEY.get(name, "image")
    x_train, y_train = _read_source(sources[0], key, convert)
    x_test, y_test = _read_source(sources[1], key, convert)
    if name in BUILTIN_DATASETS:
        _cache_arrays(builder, (x_train, y_train, x_test, y_test))
    return x_train, y_train, x_test, y_test, builder.info.features["label"].num_classes


ARRAYS_CACHE = "arrays.npz"  # beside a built-in's prepared TFDS files


def _cached_arrays(builder) -> tuple[np.ndarray, ...] | None:
    """A built-in's (x_train, y_train, x_test, y_test) from its array cache, if written:
    reading the records one by one costs about a minute for `glyphs`, the cache a second."""
    path = Path(builder.data_dir) / ARRAYS_CACHE
    if not path.exists():
        return None
    with np.load(path) as f:
        return tuple(f[k] for k in ("x_train", "y_train", "x_test", "y_test"))


def _cache_arrays(builder, arrays) -> None:
    from nas_jax.utils.metrics import atomic_write

    names = ("x_train", "y_train", "x_test", "y_test")
    try:
        atomic_write(Path(builder.data_dir) / ARRAYS_CACHE,
                     lambda f: np.savez(f, **dict(zip(names, arrays))), binary=True)
    except OSError:  # a read-only data dir: read the records again next time
        pass


def _read_source(
    source: Sequence[dict], key: str, convert: Callable[[np.ndarray], np.ndarray] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Reads every example of a TFDS data source into preallocated (x, y) arrays."""
    x, y = None, np.empty(len(source), np.int32)
    for i in range(len(source)):
        example = source[i]
        value = np.asarray(example[key])
        if convert is not None:
            value = convert(value)
        if x is None:
            x = np.empty((len(source), *value.shape), value.dtype)
        x[i], y[i] = value, example["label"]
    if x is None:
        raise ValueError(f"data source {source!r} is empty")
    return x, y


def _omniglot_converter(image_size: int | None) -> Callable[[np.ndarray], np.ndarray]:
    """Returns a function turning an RGB omniglot image into grayscale [S, S, 1] uint8."""
    from PIL import Image

    def convert(image: np.ndarray) -> np.ndarray:
        gray = Image.fromarray(image).convert("L")
        if image_size is not None:
            gray = gray.resize((image_size, image_size), Image.Resampling.LANCZOS)
        return np.asarray(gray)[..., None]

    return convert


def _not_prepared_message(builder, data_dir: str | None) -> str:
    name = builder.name
    where = f" --data_dir={data_dir}" if data_dir else ""
    state = (
        "is prepared in another file format (random access needs array_record)"
        if builder.is_prepared()
        else "is not prepared"
    )
    return (
        f"dataset {name!r} {state} under {builder.data_dir}; nas_jax never downloads. "
        f"Prepare it once on a machine with network access (TensorFlow needed to encode "
        f"images): `tfds build {name} --file_format=array_record{where}`"
    )


def _read_only(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    array.flags.writeable = False
    return array


FEW_SHOT_DATASETS = ("glyphs", "omniglot")


@flax.struct.dataclass
class FewShotSplits:
    """Class-disjoint meta-train / meta-test data. Labels are global class ids (`num_classes`
    in all); `train_classes` / `test_classes` (sorted int32, disjoint) are those present."""

    meta_train: Split
    meta_test: Split
    train_classes: np.ndarray
    test_classes: np.ndarray
    name: str = flax.struct.field(pytree_node=False)
    num_classes: int = flax.struct.field(pytree_node=False)
    input_shape: tuple[int, ...] = flax.struct.field(pytree_node=False)


def few_shot_splits(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    rotations: bool | None = None,
    image_size: int = 28,
    normalize: bool = True,
    as_jax: bool = True,
) -> FewShotSplits:
    """Loads `name` (one of `FEW_SHOT_DATASETS`) with its standard class-disjoint split.

    `glyphs`: the classes of the meta-train vs meta-test scripts (`glyphs.SCRIPT_SPLIT`), 28x28.
    `omniglot`: TFDS `train` (background alphabets) vs `test` (evaluation alphabets), resized
    to `image_size`. With `rotations` (default: True for omniglot only) every class rotated by
    90, 180 and 270 degrees is a further class (id `c + k * C`), so there are 4x classes.
    Normalisation uses the statistics of the whole meta-train split (rotation-invariant).
    """
    if name not in FEW_SHOT_DATASETS:
        raise ValueError(f"few-shot dataset must be one of {FEW_SHOT_DATASETS}, got {name!r}")
    if name == "glyphs" and image_size != 28:
        raise ValueError(f"image_size must be 28 for glyphs (rendered at 28x28), got {image_size}")
    rotations = name == "omniglot" if rotations is None else bool(rotations)
    ds = load_dataset(
        name,
        data_dir=data_dir,
        valid_fraction=0.0,
        normalize=normalize,
        as_jax=False,
        image_size=int(image_size) if name == "omniglot" else None,
    )
    turns = 4 if rotations else 1
    parts = []
    for split in (ds.train, ds.test):
        x, y = np.asarray(split.x), np.asarray(split.y)
        x = np.concatenate([np.rot90(x, k, axes=(1, 2)) for k in range(turns)])
        y = np.concatenate([y + k * ds.num_classes for k in range(turns)]).astype(np.int32)
        parts.append((x, y))
    convert = jnp.asarray if as_jax else _read_only
    (x_train, y_train), (x_test, y_test) = parts
    return FewShotSplits(
        meta_train=Split(x=convert(x_train), y=convert(y_train)),
        meta_test=Split(x=convert(x_test), y=convert(y_test)),
        train_classes=_read_only(np.unique(y_train).astype(np.int32)),
        test_classes=_read_only(np.unique(y_test).astype(np.int32)),
        name=name,
        num_classes=turns * ds.num_classes,
        input_shape=ds.input_shape,
    )


def quadrant_images(key: jax.Array, n: int, classes: int = 4):
    """A tiny generated image task: ``n`` noisy 8x8x1 images whose label (balanced over up
    to 4 ``classes``) is which quadrant is bright. For tests and smoke runs."""
    k_perm, k_noise = jax.random.split(key)
    y = jax.random.permutation(k_perm, jnp.arange(n) % classes)
    masks = np.zeros((classes, 8, 8, 1), np.float32)
    for c in range(classes):
        r, col = divmod(c, 2)
        masks[c, 4 * r : 4 * r + 4, 4 * col : 4 * col + 4] = 1.0
    return 0.3 * jax.random.normal(k_noise, (n, 8, 8, 1)) + jnp.asarray(masks)[y], y
