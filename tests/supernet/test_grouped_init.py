"""The grouped init (one batched draw per kind and shape) equals the compiled per-kernel init
bit for bit, and a deferred build refuses keys taken around ``ops.draw``."""

import functools

import jax
import numpy as np
import pytest

from nas_jax import ops
from nas_jax.evaluators.executors import supernet_init
from nas_jax.evaluators.population import build_network, init_candidate
from nas_jax.spaces.nb201 import NB201Space
from nas_jax.supernet.grouped_init import GroupedInit

SPACE = NB201Space(channels=2, cells_per_stage=1, input_shape=(8, 8, 1), num_classes=10)


@pytest.mark.parametrize("partitionable", [False, True])
def test_grouped_init_equals_the_per_kernel_init(partitionable):
    options = dict(select="switch", conv_impl="taps")
    grouped = GroupedInit(lambda rngs: build_network(SPACE, None, rngs=rngs, **options))
    assert grouped.num_groups < len(jax.tree.leaves(grouped(jax.random.key(0))[0]))
    reference = jax.jit(functools.partial(init_candidate, SPACE, None, **options))
    with jax.threefry_partitionable(partitionable):
        for seed in (3, 4):
            got, want = grouped(jax.random.key(seed)), reference(jax.random.key(seed))
            assert jax.tree.structure(got[:2]) == jax.tree.structure(want[:2])
            for a, b in zip(jax.tree.leaves(got[:2]), jax.tree.leaves(want[:2])):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            np.testing.assert_array_equal(jax.random.key_data(got[2]),
                                          jax.random.key_data(want[2]))
    a, b = grouped(jax.random.key(3))[0], grouped(jax.random.key(5))[0]
    assert not all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_executors_use_it_for_nb201():
    assert isinstance(supernet_init(SPACE), GroupedInit)


def test_deferred_build_refuses_a_direct_key():
    keys = ops.DeferredKeys()
    deferred = ops.he_normal(keys, (3, 3, 2, 4))
    assert isinstance(deferred, ops.Deferred) and deferred.index == 0 and keys.count == 1
    with pytest.raises(ops.DirectKeyError, match="through ops.draw"):
        keys.params()


def test_a_network_of_flax_layers_falls_back_to_the_per_kernel_init(monkeypatch):
    from flax import nnx

    from nas_jax.evaluators import population

    def build(space, arch=None, *, rngs, **options):
        return nnx.Linear(3, 2, rngs=rngs)  # takes rngs.params() itself

    monkeypatch.setattr(population, "build_network", build)
    init = supernet_init(SPACE)
    assert not isinstance(init, GroupedInit)
    params, _, _ = init(jax.random.key(0), None)
    assert params["kernel"].shape == (3, 2)


def test_draw_with_nnx_rngs_and_param_keys_agree():
    from flax import nnx

    a = ops.he_normal(nnx.Rngs(7), (3, 3, 2, 4))
    b = ops.he_normal(ops.ParamKeys(7), (3, 3, 2, 4))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
