"""Jittable task sampling for meta-learning: class-subset tasks and N-way K-shot episodes.

Samplers are pytrees: the data (`x` on device, a padded per-class index table) are leaves and
the sizes (ways, shots, ...) are static fields, so `jax.jit(lambda s, k: s.sample(k))(sampler,
key)` compiles once per sampler configuration and passes the data as arguments rather than
baking it into the program as constants. Build samplers on the host with `create` (labels
must be concrete there); `sample` is pure and jittable.
"""

from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from nas_jax.data.datasets import Split


def split_classes(
    num_classes: int | Sequence[int] | np.ndarray,
    num_meta_test: int | Sequence[int],
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Splits classes into disjoint (meta-train, meta-test) sets, both sorted int32.

    Args:
      num_classes: the number of classes (ids 0..n-1), or the class ids to split.
      num_meta_test: how many classes to hold out, chosen by a `seed`-ed permutation; or the
        explicit meta-test class ids.
      seed: seed of the permutation (unused with an explicit list).
    """
    if isinstance(num_classes, int | np.integer):
        classes = np.arange(int(num_classes))
    else:
        classes = np.unique(np.asarray(num_classes, np.int64))
    if isinstance(num_meta_test, int | np.integer):
        if not 0 < num_meta_test < len(classes):
            raise ValueError(
                f"num_meta_test must be in [1, {len(classes) - 1}] for {len(classes)} classes, "
                f"got {num_meta_test}"
            )
        perm = np.random.default_rng(seed).permutation(len(classes))
        test = classes[perm[: int(num_meta_test)]]
    else:
        test = np.asarray(num_meta_test, np.int64)
        if len(np.unique(test)) != len(test) or not np.isin(test, classes).all():
            raise ValueError(
                f"meta-test classes {test.tolist()} must be distinct ids among {classes.tolist()}"
            )
        if len(test) in (0, len(classes)):
            raise ValueError("meta-test classes must be a non-empty, proper subset")
    train = np.setdiff1d(classes, test)
    return train.astype(np.int32), np.sort(test).astype(np.int32)


def class_index_table(y: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns (table int32 [C, max_count], counts int32 [C]) of example indices per class.

    Row `c` lists the indices of examples with label `classes[c]`, padded with -1 to the
    largest class's count.
    """
    y = np.asarray(y)
    rows = [np.flatnonzero(y == c) for c in classes]
    counts = np.array([len(r) for r in rows], np.int32)
    table = np.full((len(rows), max(counts.max(initial=0), 1)), -1, np.int32)
    for row, idx in zip(table, rows, strict=True):
        row[: len(idx)] = idx
    return table, counts


def _choose_rows(key: jax.Array, num_rows: int, ways: int) -> jax.Array:
    """Chooses `ways` distinct rows out of `num_rows`, uniformly (a random permutation's head)."""
    return jnp.argsort(jax.random.uniform(key, (num_rows,)))[:ways]


def _draw_per_class(key, table, counts, rows, num: int, replace: bool) -> jax.Array:
    """Draws `num` example indices for each of `rows`: int32 [len(rows), num].

    Without replacement, the `num` smallest of uniform scores over a row's valid entries are
    distinct examples (the padding gets scores above every valid one).
    """
    counts = counts[rows][:, None]
    width = table.shape[1]
    if replace:
        picks = jax.random.randint(key, (rows.shape[0], num), 0, counts)
    else:
        scores = jax.random.uniform(key, (rows.shape[0], width))
        scores = jnp.where(jnp.arange(width) < counts, scores, 2.0)
        picks = jnp.argsort(scores, axis=1)[:, :num]
    return jnp.take_along_axis(table[rows], picks, axis=1)


def _prepare(data: Split | tuple, classes) -> tuple[jax.Array, np.ndarray, np.ndarray]:
    x, y = (data.x, data.y) if isinstance(data, Split) else data
    y = np.asarray(y)
    classes = np.unique(y) if classes is None else np.asarray(classes, np.int32)
    if len(classes) == 0 or len(np.unique(classes)) != len(classes):
        raise ValueError(f"allowed classes must be non-empty and distinct, got {classes.tolist()}")
    return jnp.asarray(x), y, classes.astype(np.int32)


def _check_counts(counts: np.ndarray, classes: np.ndarray, needed: int, what: str) -> None:
    short = classes[counts < needed]
    if len(short):
        raise ValueError(
            f"{what} needs {needed} examples per class; classes {short.tolist()} have fewer"
        )


@flax.struct.dataclass
class ClassSubsetTasks:
    """Tasks made of `ways` random allowed classes, relabelled 0..ways-1.

    Each task has `examples_per_class` examples per chosen class, drawn without replacement
    (every allowed class must have that many) or, with `replace=True`, with replacement.
    """

    x: jax.Array
    table: jax.Array
    counts: jax.Array
    classes: jax.Array
    examples_per_class: int = flax.struct.field(pytree_node=False)
    replace: bool = flax.struct.field(pytree_node=False, default=False)

    @classmethod
    def create(
        cls,
        data: Split | tuple,
        classes: Sequence[int] | np.ndarray | None = None,
        *,
        examples_per_class: int,
        replace: bool = False,
    ) -> "ClassSubsetTasks":
        """Indexes `data` (a `Split` or `(x, y)`) by class; `classes` defaults to all present."""
        x, y, classes = _prepare(data, classes)
        table, counts = class_index_table(y, classes)
        _check_counts(counts, classes, 1 if replace else examples_per_class, "ClassSubsetTasks")
        return cls(
            x,
            jnp.asarray(table),
            jnp.asarray(counts),
            jnp.asarray(classes),
            examples_per_class=int(examples_per_class),
            replace=bool(replace),
        )

    def sample(self, key: jax.Array, ways: int) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Returns (x [ways*E, ...], y int32 [ways*E], classes int32 [ways]) of one task.

        Examples are grouped by class: rows `i*E:(i+1)*E` have label `i`, originally
        `classes[i]`. `ways` must be a Python int (static under jit).
        """
        if not 0 < ways <= self.classes.shape[0]:
            raise ValueError(f"ways must be in [1, {self.classes.shape[0]}], got {ways}")
        class_key, example_key = jax.random.split(key)
        rows = _choose_rows(class_key, self.classes.shape[0], ways)
        idx = _draw_per_class(
            example_key, self.table, self.counts, rows, self.examples_per_class, self.replace
        )
        y = jnp.repeat(jnp.arange(ways, dtype=jnp.int32), self.examples_per_class)
        return self.x[idx.reshape(-1)], y, self.classes[rows]


@flax.struct.dataclass
class Episode:
    """An N-way K-shot episode; labels are 0..N-1 and `classes[i]` is label i's original id."""

    support_x: jax.Array
    support_y: jax.Array
    query_x: jax.Array
    query_y: jax.Array
    classes: jax.Array


@flax.struct.dataclass
class EpisodeSampler:
    """N-way K-shot episodes with Q queries per class from a fixed set of allowed classes.

    Support and query examples are distinct examples (drawn without replacement), so every
    allowed class needs at least `shots + queries` examples. Both sets are grouped by class.
    """

    x: jax.Array
    table: jax.Array
    counts: jax.Array
    classes: jax.Array
    ways: int = flax.struct.field(pytree_node=False)
    shots: int = flax.struct.field(pytree_node=False)
    queries: int = flax.struct.field(pytree_node=False)

    @classmethod
    def create(
        cls,
        data: Split | tuple,
        classes: Sequence[int] | np.ndarray | None = None,
        *,
        ways: int,
        shots: int,
        queries: int,
    ) -> "EpisodeSampler":
        """Indexes `data` (a `Split` or `(x, y)`) by class; `classes` defaults to all present."""
        x, y, classes = _prepare(data, classes)
        if not 0 < ways <= len(classes):
            raise ValueError(f"ways must be in [1, {len(classes)}] (allowed classes), got {ways}")
        if shots < 1 or queries < 1:
            raise ValueError(f"shots and queries must be >= 1, got {shots} and {queries}")
        table, counts = class_index_table(y, classes)
        _check_counts(counts, classes, shots + queries, "EpisodeSampler")
        return cls(
            x,
            jnp.asarray(table),
            jnp.asarray(counts),
            jnp.asarray(classes),
            ways=int(ways),
            shots=int(shots),
            queries=int(queries),
        )

    def sample(self, key: jax.Array) -> Episode:
        """Samples one episode: support [N*K, ...], query [N*Q, ...]."""
        class_key, example_key = jax.random.split(key)
        rows = _choose_rows(class_key, self.classes.shape[0], self.ways)
        idx = _draw_per_class(
            example_key, self.table, self.counts, rows, self.shots + self.queries, False
        )
        labels = jnp.arange(self.ways, dtype=jnp.int32)
        support, query = idx[:, : self.shots].reshape(-1), idx[:, self.shots :].reshape(-1)
        return Episode(
            support_x=self.x[support],
            support_y=jnp.repeat(labels, self.shots),
            query_x=self.x[query],
            query_y=jnp.repeat(labels, self.queries),
            classes=self.classes[rows],
        )

    def sample_batch(self, key: jax.Array, batch: int) -> Episode:
        """Samples `batch` independent episodes stacked on a leading axis (vmap)."""
        return jax.vmap(self.sample)(jax.random.split(key, batch))


def make_episode_samplers(
    data: Split | tuple,
    num_meta_test: int | Sequence[int],
    *,
    ways: int,
    shots: int,
    queries: int,
    seed: int = 0,
) -> tuple[EpisodeSampler, EpisodeSampler]:
    """Returns (meta-train, meta-test) episode samplers over disjoint classes of `data`.

    The classes present in `data` are split by `split_classes(present, num_meta_test, seed)`.
    """
    train_classes, test_classes = split_classes(
        np.unique(np.asarray(_labels(data))), num_meta_test, seed
    )
    return tuple(
        EpisodeSampler.create(data, classes, ways=ways, shots=shots, queries=queries)
        for classes in (train_classes, test_classes)
    )


def make_class_subset_tasks(
    data: Split | tuple,
    num_meta_test: int | Sequence[int],
    *,
    examples_per_class: int,
    replace: bool = False,
    seed: int = 0,
) -> tuple[ClassSubsetTasks, ClassSubsetTasks]:
    """Returns (meta-train, meta-test) class-subset task families over disjoint classes."""
    train_classes, test_classes = split_classes(
        np.unique(np.asarray(_labels(data))), num_meta_test, seed
    )
    return tuple(
        ClassSubsetTasks.create(
            data, classes, examples_per_class=examples_per_class, replace=replace
        )
        for classes in (train_classes, test_classes)
    )


def _labels(data: Split | tuple):
    return data.y if isinstance(data, Split) else data[1]
