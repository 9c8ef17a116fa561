"""Tabular benchmark: file round trip, lookup through canonical classes, seeds, partial tables,
errors, the registry/config hook, and building a table by training (3 archs x 2 steps)."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from nas_jax import registry
from nas_jax.config import ConfigError, search_config, validate
from nas_jax.data.datasets import dataset_from_arrays
from nas_jax.evaluators import table_build
from nas_jax.evaluators.population import PopulationEvaluator
from nas_jax.evaluators.table import (
    Table,
    TableEvaluator,
    TableNotFoundError,
    canonical_archs,
    make_table,
)
from nas_jax.evaluators.table_build import synthetic_table
from nas_jax.spaces.base import SearchSpace
from nas_jax.spaces.macro import MLPSpace
from nas_jax.spaces.nb201 import OPS, NB201Space
from nas_jax.strategies.base import scan_search
from nas_jax.strategies.evolution import RandomSearch
from nas_jax.train.steps import Recipe

NB201 = NB201Space(channels=8, cells_per_stage=1, input_shape=(8, 8, 1))
SMALL = SearchSpace(num_choices=(3, 4, 2))  # no canonical form: every vector is a row
SMALL_MLP = MLPSpace(max_layers=2, units=(4, 8), activations=("relu", "tanh"),
                     input_shape=(8, 8, 1), num_classes=4)


@pytest.fixture(scope="module")
def nb201_table():
    return synthetic_table(NB201, jax.random.key(0))


@pytest.fixture(scope="module")
def nb201_evaluator(nb201_table):
    return TableEvaluator(nb201_table)


def small_table(rows=None, counts=(3,) * 24):
    """SMALL's architectures (or ``rows`` of them) with known per-seed values:
    valid[r, s] = code/100 + s/1000 for the first ``counts[r]`` seeds, test = valid + 0.5."""
    archs = SMALL.enumerate()
    codes = np.arange(len(archs))
    if rows is not None:
        archs, codes = archs[rows], codes[rows]
    valid = np.full((len(archs), 3), np.nan, np.float32)
    for i, (code, n) in enumerate(zip(codes, np.asarray(counts)[codes])):
        valid[i, :n] = code / 100 + np.arange(n) / 1000
    return make_table(SMALL, archs, valid_accuracy=valid, test_accuracy=valid + 0.5,
                      metadata={"dataset": "known", "seeds": [0, 1, 2]})


def test_save_load_round_trip(tmp_path, nb201_table):
    path = nb201_table.save(tmp_path / "t.npz")
    loaded = Table.load(path)
    for name in ("archs", "valid_accuracy", "test_accuracy", "valid_loss", "train_loss",
                 "train_seconds", "params", "flops"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(nb201_table, name))
        assert getattr(loaded, name).dtype == getattr(nb201_table, name).dtype
    assert loaded.metadata == json.loads(json.dumps(nb201_table.metadata))
    assert loaded.space == NB201 and loaded.complete and loaded.num_rows == 4930
    assert loaded.params[0] == NB201.num_params(loaded.archs[0])


def test_every_nb201_arch_finds_its_canonical_row(nb201_table, nb201_evaluator):
    archs = NB201.enumerate()
    rows = np.asarray(nb201_evaluator.rows(jnp.asarray(archs)))
    canonical = np.stack([NB201.canonical(a) for a in archs])
    np.testing.assert_array_equal(nb201_table.archs[rows], canonical)
    # Isomorphic cells: node 1 is dead when nothing reads it; nodes 1 and 2 may swap.
    iso = jnp.array([[0, 0, 0, 0, 0, 3], [3, 0, 0, 0, 0, 3], [2, 3, 0, 0, 0, 1],
                     [3, 2, 0, 0, 1, 0]], jnp.int32)
    _, m = nb201_evaluator(jax.random.key(1), iso)
    assert m["row"][0] == m["row"][1] and m["row"][2] == m["row"][3]
    assert m["test_accuracy"][0] == m["test_accuracy"][1]
    assert m["valid_accuracy_mean"][2] == m["valid_accuracy_mean"][3]
    assert np.all(np.isfinite(np.asarray(m["test_accuracy"])))


def test_lookup_is_jittable_deterministic_and_draws_measured_seeds():
    counts = np.array([1, 2, 3] * 8)
    ev = TableEvaluator(small_table(counts=counts))
    archs = jnp.asarray(np.repeat(SMALL.enumerate(), 200, axis=0))
    fitness = jax.jit(ev.fitness_fn)(jax.random.key(3), archs)
    again, m = ev(jax.random.key(3), archs)
    np.testing.assert_array_equal(fitness, again)
    other = jax.jit(ev.fitness_fn)(jax.random.key(4), archs)
    assert not np.array_equal(fitness, other)
    codes = np.repeat(np.arange(24), 200)
    seed = np.asarray(m["seed_index"])
    np.testing.assert_allclose(fitness, codes / 100 + seed / 1000, atol=1e-6)
    for n in (1, 2, 3):  # each row draws only its measured seeds, all of them
        assert set(seed[counts[codes] == n]) == set(range(n))
    means = np.array([np.mean(np.arange(n)) / 1000 for n in counts[codes]])
    np.testing.assert_allclose(m["valid_accuracy_mean"], codes / 100 + means, atol=1e-6)
    np.testing.assert_allclose(m["test_accuracy"], codes / 100 + means + 0.5, atol=1e-6)
    assert not np.any(m["missing"])


def test_mean_fitness_inside_scan_search(nb201_evaluator):
    search = jax.jit(scan_search, static_argnums=(0, 1, 3))
    state, metrics = search(RandomSearch(space=NB201, batch_size=8),
                            nb201_evaluator.mean_fitness_fn, jax.random.key(0), 5)
    _, m = nb201_evaluator(jax.random.key(1), state.best.arch[None])
    assert state.best.fitness == m["valid_accuracy_mean"][0] == metrics["best_fitness"][-1]
    assert state.best.fitness == np.max(metrics["batch_max_fitness"])


def test_partial_table_and_invalid_archs():
    rows = [0, 5, 7, 23]
    table = small_table(rows=rows)
    assert not table.complete and table.metadata["num_total"] == 24
    with pytest.raises(ValueError, match="allow_partial"):
        TableEvaluator(table)
    for ev in (TableEvaluator(table, allow_partial=True),
               TableEvaluator(table, allow_partial=True, dense_limit=0)):  # sorted codes
        archs = jnp.asarray(np.concatenate([SMALL.enumerate(), [[3, 0, 0], [0, -1, 0]]]))
        fitness, m = ev(jax.random.key(0), archs)
        present = np.isin(np.arange(26), rows)
        np.testing.assert_array_equal(np.asarray(m["missing"]), ~present)
        assert np.all(np.isneginf(fitness[~present]))
        assert np.all(np.isnan(m["test_accuracy"][~present]))
        np.testing.assert_allclose(m["test_accuracy"][present],
                                   np.array(rows) / 100 + 0.501, atol=1e-6)
        np.testing.assert_array_equal(m["row"][present], np.arange(4))


def test_sorted_code_index_equals_dense(nb201_table, nb201_evaluator):
    sparse = TableEvaluator(nb201_table, dense_limit=0)
    assert "codes" in sparse.arrays and "dense" in nb201_evaluator.arrays
    archs = jnp.asarray(np.concatenate([canonical_archs(NB201), NB201.enumerate()[::7]]))
    dense_rows = np.asarray(nb201_evaluator.rows(archs))
    np.testing.assert_array_equal(np.asarray(sparse.rows(archs))[:4930], np.arange(4930))
    # Non-canonical vectors are only found through the dense index over the whole space.
    found = np.asarray(sparse.rows(archs)) >= 0
    np.testing.assert_array_equal(np.asarray(sparse.rows(archs))[found], dense_rows[found])


def test_load_errors_name_the_problem(tmp_path, nb201_table):
    missing = str(tmp_path / "nope.npz")
    with pytest.raises(TableNotFoundError, match="build_table.py.*--out=.*nope.npz") as info:
        Table.load(missing)
    assert "--config=CONFIG" in str(info.value)  # not a shipped table: the user picks a config
    assert "configs/table_nb201_digits.py" in str(info.value)
    with pytest.raises(TableNotFoundError) as info:  # a shipped table's name: its own config
        Table.load(tmp_path / "nb201_4ops_c8n1_digits.npz")
    assert ("build_table.py --config=configs/table_nb201_4ops_digits.py --out="
            f"{tmp_path / 'nb201_4ops_c8n1_digits.npz'}") in str(info.value)
    np.savez(tmp_path / "bad.npz", archs=np.zeros((2, 6), np.int32))
    with pytest.raises(ValueError, match="missing arrays: metadata"):
        Table.load(tmp_path / "bad.npz")
    valid = nb201_table.valid_accuracy.copy()
    valid[3, 0] = np.nan  # a gap before measured seeds
    with pytest.raises(ValueError, match="valid_accuracy row 3"):
        make_table(NB201, nb201_table.archs, valid_accuracy=valid,
                   test_accuracy=nb201_table.test_accuracy, metadata={"dataset": "x"})
    with pytest.raises(ValueError, match=r"archs has shape \(4930, 5\)"):
        make_table(NB201, nb201_table.archs[:, :5], valid_accuracy=nb201_table.valid_accuracy,
                   test_accuracy=nb201_table.test_accuracy, metadata={"dataset": "x"},
                   params=nb201_table.params, flops=nb201_table.flops)
    noncanonical = nb201_table.archs.copy()
    noncanonical[0] = [3, 0, 0, 0, 0, 0]  # canonical: all none
    t = make_table(NB201, noncanonical, valid_accuracy=nb201_table.valid_accuracy,
                   test_accuracy=nb201_table.test_accuracy, metadata={"dataset": "x"})
    with pytest.raises(ValueError, match="not its class's canonical"):
        TableEvaluator(t)


def test_config_and_registry(tmp_path, nb201_table):
    c = search_config()
    c.evaluator = ml_collections.ConfigDict({**c.evaluator.to_dict(), "name": "table",
                                             "table_path": str(tmp_path / "t.npz")})
    with pytest.raises(ConfigError, match=r"config.evaluator.table_path=.*build_table.py"):
        validate(c)
    nb201_table.save(tmp_path / "t.npz")
    space = validate(c)
    ev = registry.EVALUATORS.build("table", c.evaluator, space, None)
    assert ev.execution == "table" and isinstance(ev, TableEvaluator)
    small_table().save(tmp_path / "small.npz")
    c.evaluator.table_path = str(tmp_path / "small.npz")
    with pytest.raises(ConfigError, match="num_choices"):
        validate(c)


def test_op_subset_table_is_complete_and_refuses_other_ops(tmp_path):
    sub = NB201Space(channels=8, cells_per_stage=1, input_shape=(8, 8, 1), ops=OPS[:4])
    table = synthetic_table(sub, jax.random.key(1))
    assert table.archs.shape == (871, 6) and table.complete and table.space == sub
    table.save(tmp_path / "sub.npz")
    evaluator = TableEvaluator.from_path(str(tmp_path / "sub.npz"), space=sub)
    rows = np.asarray(evaluator.rows(sub.enumerate()))
    assert rows.min() >= 0 and len(np.unique(rows)) == 871
    c = search_config()
    c.evaluator = ml_collections.ConfigDict({**c.evaluator.to_dict(), "name": "table",
                                             "table_path": str(tmp_path / "sub.npz")})
    with pytest.raises(ConfigError, match="ops none, skip_connect, nor_conv_1x1, nor_conv_3x3;"
                                          " the config's space among .*avg_pool_3x3.*space.ops"):
        validate(c)
    c.space.ops = OPS[:4]
    assert validate(c).ops == sub.ops


def test_build_trains_nb201_with_the_switch_supernet_on_cpu():
    recipe = Recipe(steps=2, batch_size=8)
    assert table_build.CandidateTrainer(NB201, recipe).execution == "switch"
    assert table_build.CandidateTrainer(NB201, recipe, "loop").execution == "loop"
    assert table_build.CandidateTrainer(SMALL_MLP, recipe).execution == "loop"
    c = table_build.table_build_config()
    c.evaluator.execution = "compiled"
    with pytest.raises(ConfigError, match="execution='compiled'"):
        table_build.validate_build(c)


# ------------------------------------------------------------------------ building
def _tiny_dataset():
    rng = np.random.default_rng(0)
    y = np.arange(96) % 4
    masks = np.zeros((4, 8, 8, 1), np.float32)
    for c in range(4):
        masks[c, 4 * (c // 2): 4 * (c // 2) + 4, 4 * (c % 2): 4 * (c % 2) + 4] = 1.0
    x = masks[y] + 0.3 * rng.standard_normal((96, 8, 8, 1)).astype(np.float32)
    return dataset_from_arrays("tiny", x[:64], y[:64], x[64:], y[64:], num_classes=4,
                               valid_fraction=0.25)


def _build_config():
    """A small MLP space: the build is generic, and an MLP compiles in seconds (the NB201
    default config's build runs through ``experiments/build_table.py --limit``)."""
    c = table_build.table_build_config()
    c.num_seeds, c.chunk_size = 2, 2
    c.space.name, c.space.max_layers = "mlp", 2
    c.space.units, c.space.activations = (4, 8), ("relu", "tanh")
    c.evaluator.update(steps=2, batch_size=16, eval_batch_size=16, optimizer="sgd",
                       weight_decay=0.0, grad_clip=0.0, execution="loop")
    c.runtime.compilation_cache_dir = ""
    c.runtime.progress_interval_s = 0.0
    return c


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The build sets the process's threefry mode (``setup_runtime``); restored afterwards."""
    previous = jax.config.jax_threefry_partitionable
    out = str(tmp_path_factory.mktemp("build") / "table.npz")
    data = _tiny_dataset()
    table = table_build.build_table(_build_config(), out, limit=3, dataset=data)
    yield out, table, data
    jax.config.update("jax_threefry_partitionable", previous)


def test_build_table_on_three_archs(built):
    out, table, data = built
    space = MLPSpace(max_layers=2, units=(4, 8), activations=("relu", "tanh"),
                     input_shape=(8, 8, 1), num_classes=4)
    assert table.space == space and not table.complete
    np.testing.assert_array_equal(table.archs, canonical_archs(space)[:3])
    assert table.valid_accuracy.shape == (3, 2) and np.all(np.isfinite(table.test_accuracy))
    assert np.all(table.train_seconds > 0) and table.metadata["recipe"]["steps"] == 2
    np.testing.assert_array_equal(Table.load(out).valid_accuracy, table.valid_accuracy)
    # Row r, seed j is what the population evaluator gives candidate r of key fold_in(., j).
    recipe = Recipe(**table.metadata["recipe"])
    pop = PopulationEvaluator(space, (data.train.x, data.train.y), (data.valid.x, data.valid.y),
                              recipe, execution="loop")
    for j in range(2):
        fitness, _ = pop(jax.random.fold_in(jax.random.key(0), j), table.archs)
        np.testing.assert_array_equal(fitness, table.valid_accuracy[:, j])


def test_build_resumes_shards_and_merges(built, tmp_path):
    out, table, data = built
    config = _build_config()
    part = os.path.join(out + ".parts", "part-0-of-1.jsonl")
    with open(part) as f:
        lines = f.readlines()
    assert len(lines) == 4  # header + 3 rows
    with open(part, "w") as f:  # a kill during the last row's write
        f.writelines(lines[:3] + [lines[3][:20]])
    again = table_build.build_table(config, out, limit=3, dataset=data)
    np.testing.assert_array_equal(again.valid_accuracy, table.valid_accuracy)
    with open(part) as f:
        lines = f.readlines()
    assert len(lines) == 5 and "header" in lines[3]  # a header per session; row 2 redone
    assert json.loads(lines[4])["row"] == 2
    assert len(again.metadata["builds"]) == 2
    # Two shards of the same rows into another table, then a merge: the same numbers.
    other = str(tmp_path / "sharded.npz")
    for i in range(2):
        assert table_build.build_table(config, other, limit=3, dataset=data,
                                       shard=(i, 2)) is None
    merged = table_build.merge_parts(other, limit=3)
    np.testing.assert_array_equal(merged.test_accuracy, table.test_accuracy)
    config.evaluator.steps = 3
    with pytest.raises(ValueError, match="another config"):
        table_build.build_table(config, out, limit=3, dataset=data)
    with pytest.raises(ValueError, match="i/n"):
        table_build.parse_shard("3")
