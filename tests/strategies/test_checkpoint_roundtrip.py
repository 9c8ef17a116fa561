"""Every strategy's state survives a checkpoint: restored against an abstract tree it has
the same leaves, and the searches continue exactly as without the checkpoint."""

import jax
import numpy as np
import pytest

from nas_jax.compare import build_strategies, compare_config, init_states, search_program, seed_keys
from nas_jax.evaluators.table import TableEvaluator
from nas_jax.evaluators.table_build import synthetic_table
from nas_jax.spaces.nb201 import NB201Space
from nas_jax.utils.checkpoint import Checkpointer

SPACE = NB201Space(channels=8, cells_per_stage=1, input_shape=(8, 8, 1))
# The comparison's strategies and budget, over 8 seeds (64, as the comparison runs, took the
# REINFORCE case 17.5 s against 4.9 s; the round trip does not depend on how many seeds).
STRATEGIES = build_strategies(compare_config(), SPACE)
FAST = ("random_search", "regularized_evolution", "genetic_algorithm")  # as test_compare
SEEDS, BUDGET = 8, 100


@pytest.fixture(scope="module")
def evaluator():
    return TableEvaluator(synthetic_table(SPACE, jax.random.key(0)))


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_state_round_trips_and_search_continues(name, evaluator, tmp_path):
    strategy = STRATEGIES[name]
    vmapped_search = search_program(name in FAST)
    keys = seed_keys(0, SEEDS)
    with jax.threefry_partitionable(False):
        states, search_keys = init_states(strategy, keys)
        states, _ = vmapped_search(strategy, BUDGET, evaluator.arrays, states, search_keys)
        with Checkpointer(tmp_path / "ckpt") as ckpt:
            ckpt.save(1, states, meta={"strategy": name})
            abstract = jax.eval_shape(lambda: init_states(strategy, keys)[0])
            restored, meta = ckpt.restore(abstract, with_meta=True)
        assert meta == {"strategy": name}
        assert jax.tree.structure(restored) == jax.tree.structure(states)
        for a, b in zip(jax.tree.leaves(states), jax.tree.leaves(restored)):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)
        more = seed_keys(1, SEEDS)
        cont, trace = vmapped_search(strategy, BUDGET, evaluator.arrays, states, more)
        # Restored arrays are committed to a device, another jit signature than the
        # comparison's (a recompile); their values are what is being tested.
        restored = jax.device_get(restored)
        cont_r, trace_r = vmapped_search(strategy, BUDGET, evaluator.arrays, restored, more)
    for a, b in zip(jax.tree.leaves((cont, trace)), jax.tree.leaves((cont_r, trace_r))):
        np.testing.assert_array_equal(a, b)
    told = np.asarray(cont.best.num_told)
    assert np.all(told == 2 * np.asarray(states.best.num_told)) and told.min() >= 2 * BUDGET
