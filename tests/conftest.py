"""Process-wide JAX flags a test changes (runs call ``runner.setup_runtime``, which sets the
PRNG implementation from their config) are restored after it, so results never depend on
which tests ran before in the same worker process."""

import jax
import pytest


@pytest.fixture(autouse=True)
def restore_prng_flag():
    partitionable = jax.config.jax_threefry_partitionable
    yield
    jax.config.update("jax_threefry_partitionable", partitionable)
