"""Task families for meta-learning an architecture proposer (Wong et al., NeurIPS 2018).

A ``Task`` is a pytree: its id, a set of feature vectors for a set encoder (one row per
class: that class's input mean and std), and what an evaluator needs: the task's data arrays
and/or its fitness table as a dense ``float32[space.size]`` array (indexed by an
architecture's mixed-radix code, ``table.arch_codes``). A family is a fixed pool of tasks with
disjoint meta-train and meta-test ids (fixed seeds, so a learned per-task embedding has a row
per meta-train task): ``ClassSubsetFamily`` (classes of one dataset, the two pools drawn from
disjoint class sets), ``Mnist1dVariantFamily`` (MNIST-1D generated with different settings)
and ``SyntheticTableFamily`` (a known smooth fitness of (architecture, task feature) whose
argmax moves with the feature: tests and a fast benchmark). ``per_task_tables`` builds or
loads one table per task, cached as one file per task.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Protocol

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from nas_jax.data.datasets import Dataset, Split, dataset_from_arrays
from nas_jax.data.tasks import ClassSubsetTasks, split_classes
from nas_jax.evaluators.table import Table, TableEvaluator
from nas_jax.spaces.base import SearchSpace
from nas_jax.spaces.macro import MLPSpace

SPLITS = ("train", "test")


@flax.struct.dataclass
class Task:
    """One task: ``task_id`` int32[], ``features`` float32[C, F] (the set encoder's input), and
    optionally ``x``/``y`` (its training examples) and ``fitness`` float32[space.size]."""

    task_id: jax.Array
    features: jax.Array
    x: jax.Array | None = None
    y: jax.Array | None = None
    fitness: jax.Array | None = None

    def light(self) -> Task:
        """The task without its data arrays (what meta-training over tables needs)."""
        return self.replace(x=None, y=None)


def stack_tasks(tasks: Sequence[Task]) -> Task:
    """Tasks stacked on a leading axis (for ``vmap`` over tasks); shapes must agree."""
    shapes = {(str(jax.tree.structure(t)), tuple(np.shape(x) for x in jax.tree.leaves(t)))
              for t in tasks}
    if len(shapes) != 1:
        raise ValueError(f"tasks have different array shapes and cannot be stacked: {shapes}; "
                         "stack .light() tasks (without data) instead")
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *tasks)


def class_features(x, y, num_classes: int) -> jax.Array:
    """Per-class mean and std of the flattened inputs, ``float32[num_classes, 2F]`` (jittable;
    a class without examples gets zeros)."""
    x = jnp.asarray(x, jnp.float32).reshape(len(y), -1)
    onehot = jax.nn.one_hot(jnp.asarray(y), num_classes, dtype=jnp.float32)
    counts = jnp.maximum(onehot.sum(0), 1.0)[:, None]
    mean = onehot.T @ x / counts
    var = onehot.T @ (x * x) / counts - mean * mean
    return jnp.concatenate([mean, jnp.sqrt(jnp.maximum(var, 0.0))], axis=1)


def mnist1d_features(x, y, feature_length: int, num_classes: int = 10) -> jax.Array:
    """An MNIST-1D task's set-encoder input: each training signal (``x`` [N, L] or [N, L, 1])
    resampled to ``feature_length`` points by linear interpolation, then ``class_features``:
    ``float32[num_classes, 2 * feature_length]``, the same for every signal length L."""
    x = np.asarray(x, np.float64)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 2:
        raise ValueError(f"MNIST-1D features need signals [N, L] or [N, L, 1], got {x.shape}")
    grid = np.linspace(0.0, 1.0, feature_length)
    src = np.linspace(0.0, 1.0, x.shape[1])
    resampled = np.stack([np.interp(grid, src, row) for row in x])
    return class_features(resampled, np.asarray(y), num_classes)


def dense_fitness(table: Table, space: SearchSpace | None = None) -> np.ndarray:
    """A table's mean valid accuracy for every vector of its space, ``float32[space.size]`` in
    ``space.enumerate()`` order (isomorphic vectors share their class's row; missing: -inf)."""
    evaluator = TableEvaluator(table, allow_partial=True)
    space = evaluator.space if space is None else space
    return np.asarray(evaluator.mean_fitness_fn(jnp.asarray(space.enumerate())), np.float32)


def table_fitness(task: Task, archs: jax.Array, space: SearchSpace) -> jax.Array:
    """Jittable lookup of ``archs`` (int32[P, D]) in ``task.fitness``: float32[P]."""
    strides = np.cumprod((space.num_choices + (1,))[::-1])[::-1][1:]
    codes = jnp.asarray(archs, jnp.int32) @ jnp.asarray(strides, jnp.int32)
    return task.fitness[codes]


class TaskFamily(Protocol):
    """A pool of tasks with disjoint meta-train / meta-test ids."""

    def ids(self, split: str) -> np.ndarray: ...

    def task(self, task_id: int) -> Task: ...

    def stacked(self, split: str) -> Task: ...

    def sample(self, key: jax.Array, split: str = "train") -> Task: ...


class TaskPool:
    """A fixed list of tasks (id ``i`` is ``tasks[i]``) split into meta-train and meta-test."""

    def __init__(self, tasks: Sequence[Task], train_ids, test_ids):
        self._tasks = list(tasks)
        self._ids = {"train": np.asarray(train_ids, np.int32),
                     "test": np.asarray(test_ids, np.int32)}
        if np.intersect1d(self._ids["train"], self._ids["test"]).size:
            raise ValueError("meta-train and meta-test task ids overlap")
        if not (len(self._ids["train"]) and len(self._ids["test"])):
            raise ValueError("a family needs at least one meta-train and one meta-test task")

    @property
    def num_tasks(self) -> int:
        return len(self._tasks)

    def ids(self, split: str) -> np.ndarray:
        """The task ids of ``split`` ('train' or 'test')."""
        if split not in SPLITS:
            raise ValueError(f"split={split!r}; allowed: {', '.join(SPLITS)}")
        return self._ids[split]

    def task(self, task_id: int) -> Task:
        return self._tasks[int(task_id)]

    def stacked(self, split: str) -> Task:
        """The split's tasks without data, stacked on a leading axis (device arrays)."""
        return stack_tasks([self._tasks[i].light() for i in self.ids(split)])

    def sample(self, key: jax.Array, split: str = "train") -> Task:
        """A uniformly drawn task of ``split`` (host-side choice from ``key``)."""
        ids = self.ids(split)
        return self.task(ids[int(jax.random.randint(key, (), 0, len(ids)))])

    def attach_tables(self, fitness: dict[int, np.ndarray]) -> None:
        """Give tasks their dense fitness arrays (``{task_id: float32[space.size]}``)."""
        for i, f in fitness.items():
            self._tasks[i] = self._tasks[i].replace(fitness=jnp.asarray(f, jnp.float32))


def _subset(split: Split, classes: np.ndarray) -> Split:
    y = np.asarray(split.y)
    keep = np.isin(y, classes)
    relabel = np.full(int(max(y.max(initial=0), classes.max()) + 1), -1, np.int32)
    relabel[classes] = np.arange(len(classes), dtype=np.int32)
    return Split(x=jnp.asarray(np.asarray(split.x)[keep]), y=jnp.asarray(relabel[y[keep]]))


@functools.partial(jax.jit, static_argnums=2)
def _draw(sampler: ClassSubsetTasks, key: jax.Array, ways: int):
    x, y, classes = sampler.sample(key, ways)
    return x, y, classes, class_features(x, y, ways)


class ClassSubsetFamily(TaskPool):
    """``ways``-class tasks of one dataset; meta-train tasks use only meta-train classes and
    meta-test tasks only the ``num_meta_test_classes`` held-out classes (``split_classes``).

    A task's ``x``/``y`` are ``examples_per_class`` training examples per class (labels
    0..ways-1); ``dataset(task_id)`` gives all of its classes' train/valid/test examples.
    """

    def __init__(self, dataset: Dataset, *, ways: int, examples_per_class: int,
                 num_train_tasks: int, num_test_tasks: int, num_meta_test_classes: int,
                 seed: int = 0):
        self.source = dataset
        self.train_classes, self.test_classes = split_classes(
            dataset.num_classes, num_meta_test_classes, seed)
        if ways > min(len(self.train_classes), len(self.test_classes)):
            raise ValueError(f"ways={ways}: more than the {len(self.train_classes)} meta-train "
                             f"or {len(self.test_classes)} meta-test classes")
        tasks, self.task_classes = [], []
        root = jax.random.key(seed)
        counts = (num_train_tasks, num_test_tasks)
        for classes, count in zip((self.train_classes, self.test_classes), counts, strict=True):
            sampler = ClassSubsetTasks.create(dataset.train, classes,
                                              examples_per_class=examples_per_class)
            for _ in range(count):
                i = len(tasks)
                x, y, chosen, features = _draw(sampler, jax.random.fold_in(root, i), ways)
                tasks.append(Task(task_id=jnp.asarray(i, jnp.int32), features=features, x=x, y=y))
                self.task_classes.append(np.asarray(chosen))
        super().__init__(tasks, np.arange(num_train_tasks),
                         np.arange(num_train_tasks, num_train_tasks + num_test_tasks))

    def dataset(self, task_id: int) -> Dataset:
        """The task's classes from every split of the source dataset, relabelled 0..ways-1."""
        classes = self.task_classes[int(task_id)]
        src = self.source
        return src.replace(train=_subset(src.train, classes), valid=_subset(src.valid, classes),
                           test=_subset(src.test, classes), num_classes=len(classes),
                           name=f"{src.name}_classes_{'_'.join(map(str, classes))}")


# Generator settings drawn per task: (low, high) uniform; integers stay integers.
MNIST1D_RANGES = {"max_translation": (24, 60), "corr_noise_scale": (0.1, 0.5),
                  "iid_noise_scale": (0.005, 0.05), "scale_coeff": (0.2, 0.6),
                  "shear_scale": (0.3, 1.2)}
# The MNIST-1D settings a family may draw per task, with the least value the generator takes
# (it draws a translation from range(max_translation)); those of MNIST1D_INTEGER are ints.
MNIST1D_RANGED = {"max_translation": 1, "corr_noise_scale": 0.0, "iid_noise_scale": 0.0,
                  "scale_coeff": 0.0, "shear_scale": 0.0, "final_seq_length": 1}
MNIST1D_INTEGER = ("max_translation", "final_seq_length")


def _integer(name: str, lo, hi) -> bool:
    """Whether a setting is drawn as an integer: by its kind where known (so ``(0, 1)`` for a
    float setting is a float range), else when both bounds are ints."""
    if name in MNIST1D_RANGED:
        return name in MNIST1D_INTEGER
    return isinstance(lo, int) and isinstance(hi, int)


class Mnist1dVariantFamily(TaskPool):
    """MNIST-1D generated with per-task settings drawn from ``ranges`` (any of
    ``MNIST1D_DEFAULTS``' numeric fields, e.g. ``final_seq_length`` for the signal length),
    fixed seeds; ids ``0..num_train-1`` are meta-train, the rest meta-test.

    Features: per-class mean/std of the training signals resampled to ``feature_length`` (so
    tasks of different signal lengths share one encoder input size).
    """

    def __init__(self, *, num_train: int, num_test: int, ranges: dict | None = None,
                 num_samples: int = 600, feature_length: int = 20, valid_fraction: float = 0.2,
                 seed: int = 0):
        from nas_jax.data.builders.mnist1d import MNIST1D_DEFAULTS, make_mnist1d

        ranges = MNIST1D_RANGES if ranges is None else ranges
        unknown = sorted(set(ranges) - set(MNIST1D_DEFAULTS))
        if unknown:
            raise ValueError(f"ranges: unknown MNIST-1D setting(s) {unknown}; known: "
                             f"{', '.join(MNIST1D_DEFAULTS)}")
        for name, (lo, _) in ranges.items():
            if name in MNIST1D_RANGED and lo < MNIST1D_RANGED[name]:
                raise ValueError(f"ranges[{name!r}]: the generator needs values >= "
                                 f"{MNIST1D_RANGED[name]}, got {lo}")
        self.ranges = dict(ranges)
        self.settings, self.datasets, tasks = [], [], []
        for i in range(num_train + num_test):
            rng = np.random.default_rng([seed, i])
            s = {name: (int(rng.integers(lo, hi + 1)) if _integer(name, lo, hi)
                        else float(rng.uniform(lo, hi)))
                 for name, (lo, hi) in sorted(ranges.items())}
            s.update(num_samples=int(num_samples), seed=int(seed * 100_003 + i))
            raw = make_mnist1d(**s)
            data = dataset_from_arrays(f"mnist1d_variant_{i}", raw["x"][..., None], raw["y"],
                                       raw["x_test"][..., None], raw["y_test"], num_classes=10,
                                       valid_fraction=valid_fraction, seed=seed)
            tasks.append(Task(task_id=jnp.asarray(i, jnp.int32),
                              features=mnist1d_features(data.train.x, data.train.y,
                                                        feature_length),
                              x=data.train.x, y=data.train.y))
            self.settings.append(s)
            self.datasets.append(data)
        super().__init__(tasks, np.arange(num_train), np.arange(num_train, num_train + num_test))

    def dataset(self, task_id: int) -> Dataset:
        """The task's train/valid/test splits (normalised by its own train statistics)."""
        return self.datasets[int(task_id)]


def default_synthetic_space() -> MLPSpace:
    """The synthetic family's default space: an MLP of 1-2 layers, 512 vectors."""
    return MLPSpace(max_layers=2, units=(16, 32, 64, 128),
                    activations=("relu", "gelu", "tanh", "swish"), input_shape=(8,),
                    num_classes=4)


class SyntheticTableFamily(TaskPool):
    """Tasks with a task feature ``f ~ U[-1, 1]^k`` and a known fitness table.

    Decision ``d``'s choice ``a_d`` sits at ``pos_d = a_d / (n_d - 1)``; its target is
    ``t_d(f) = sigmoid(sharpness * (W_d . f + b_d))`` (unit-norm rows ``W_d`` and ``b_d ~
    U[-0.5, 0.5]``, fixed by ``seed``, so every target sweeps most of [0, 1] over f). The
    fitness of an architecture (through ``space.canonical``) is ``0.9 - 0.4 * mean_d (pos_d -
    t_d(f))^2``, so the best architecture is the choice nearest each target: a known smooth
    function of ``f`` that moves with it. The set features are ``set_size`` noisy copies of
    ``f`` (``feature_noise``), whose mean a set encoder can recover.
    """

    def __init__(self, space: SearchSpace | None = None, *, num_train: int = 16,
                 num_test: int = 4, feature_dim: int = 2, set_size: int = 4,
                 feature_noise: float = 0.05, sharpness: float = 3.0, seed: int = 0):
        self.space = default_synthetic_space() if space is None else space
        rng = np.random.default_rng(seed)
        d, n = self.space.num_decisions, num_train + num_test
        weights = rng.standard_normal((d, feature_dim))
        self.weights = weights / np.linalg.norm(weights, axis=1, keepdims=True)
        self.bias = rng.uniform(-0.5, 0.5, d)
        self.sharpness = float(sharpness)
        self.task_features = rng.uniform(-1.0, 1.0, (n, feature_dim))
        archs = self.space.enumerate()
        canon = np.stack([self.space.canonical(a) for a in archs]).astype(np.float64)
        span = np.maximum(np.asarray(self.space.num_choices) - 1, 1)
        pos = np.where(np.asarray(self.space.num_choices) > 1, canon / span, 0.5)
        tasks = []
        for i, f in enumerate(self.task_features):
            fit = 0.9 - 0.4 * np.mean((pos - self.targets(f)) ** 2, axis=1)
            noisy = f + feature_noise * rng.standard_normal((set_size, feature_dim))
            tasks.append(Task(task_id=jnp.asarray(i, jnp.int32),
                              features=jnp.asarray(noisy, jnp.float32),
                              fitness=jnp.asarray(fit, jnp.float32)))
        super().__init__(tasks, np.arange(num_train), np.arange(num_train, n))

    def targets(self, f) -> np.ndarray:
        """``t(f)``: each decision's target position in [0, 1]."""
        return 1.0 / (1.0 + np.exp(-self.sharpness * (self.weights @ np.asarray(f) + self.bias)))

    def best_arch(self, task_id: int) -> np.ndarray:
        """The table's argmax for the task (int32[D])."""
        return self.space.enumerate()[int(np.argmax(np.asarray(self.task(task_id).fitness)))]


def per_task_tables(family: TaskPool, build_fn: Callable[[int, str], Table], cache_dir: str,
                    *, space: SearchSpace | None = None) -> dict[int, Table]:
    """One table per task of ``family``: loaded from ``cache_dir/task-<id>.npz`` when present,
    else ``build_fn(task_id, path)`` (e.g. ``table_build.build_table`` on the task's dataset,
    or ``synthetic_table``) and saved there. The tasks get the tables as dense fitness."""
    os.makedirs(cache_dir, exist_ok=True)
    tables = {}
    for i in range(family.num_tasks):
        path = os.path.join(cache_dir, f"task-{i}.npz")
        if os.path.isfile(path):
            tables[i] = Table.load(path)
            continue
        tables[i] = build_fn(i, path)
        if not os.path.isfile(path):
            tables[i].save(path)
    family.attach_tables({i: dense_fitness(t, space) for i, t in tables.items()})
    return tables


def training_table_builder(family, config) -> Callable[[int, str], Table]:
    """A ``build_fn`` for ``per_task_tables`` that trains every architecture on the task's
    dataset with ``table_build.build_table(config, path, dataset=family.dataset(task_id))``."""
    from nas_jax.evaluators.table_build import build_table

    def build(task_id: int, path: str) -> Table:
        return build_table(config, path, dataset=family.dataset(task_id))

    return build
