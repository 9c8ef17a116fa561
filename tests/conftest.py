"""Suite-wide settings.

- XLA's CPU backend compiles at optimisation level 0 in the tests (and in the runs they start
  as subprocesses, which inherit the environment): the suite is dominated by compiling many
  tiny programs, which this makes ~2x faster, while the few steps each program runs get
  slower by less. It also uses XLA:CPU's older fusion emitters
  (``--xla_cpu_use_fusion_emitters=false``), which compiled the composed execution's
  per-unit programs 2.5x faster (8 s against 21 s for 135 programs of a tiny DARTS
  search). Set ``NAS_JAX_TEST_XLA_OPT=1`` to test with XLA's default settings.
- Process-wide JAX flags a test changes (runs call ``runner.setup_runtime``, which sets the
  PRNG implementation from their config) are restored after it, so results never depend on
  which tests ran before in the same worker process.
- Test files run on the xdist workers in the order collected (``--dist loadfile``), so the
  files that take longest are moved to the front (``LONGEST_FIRST``, from ``--durations``
  on 2 cores): started last, one of them would run alone on one worker at the end.
- Tests marked ``@pytest.mark.slow`` (each compiles a large program, e.g. a MetaNAS supernet,
  or runs a tool end to end whose parts are tested apart: ~20-60 s on 2 cores) run only with
  ``NAS_JAX_SLOW_TESTS=1``, which keeps the suite under 10 minutes there.
"""

import os

if os.environ.get("NAS_JAX_TEST_XLA_OPT") != "1":
    # Read when the backend starts (the first computation), so setting it here is in time.
    os.environ["XLA_FLAGS"] = " ".join(
        filter(None, [os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0",
                      "--xla_cpu_use_fusion_emitters=false"]))

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def restore_prng_flag():
    partitionable = jax.config.jax_threefry_partitionable
    yield
    jax.config.update("jax_threefry_partitionable", partitionable)


@pytest.fixture(autouse=True, scope="module")
def restore_prng_flag_per_module():
    """The same for module-scoped fixtures (a run started by one sets the flag before the
    per-test fixture reads it): without this, a file's results depended on whether a file
    before it in the same worker had left the flag off."""
    partitionable = jax.config.jax_threefry_partitionable
    yield
    jax.config.update("jax_threefry_partitionable", partitionable)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: compiles a large program or runs a tool end "
                            "to end; runs only with NAS_JAX_SLOW_TESTS=1")


# Files whose tests (fixtures included) take longest, longest first.
LONGEST_FIRST = (
    "tests/strategies/test_gdas_composed.py",
    "tests/test_runner.py",
    "tests/test_gradient_search.py",
    "tests/supernet/test_darts_network.py",
    "tests/evaluators/test_oneshot.py",
    "tests/evaluators/test_executors.py",
    "tests/test_collapse_study.py",
    "tests/strategies/test_compare.py",
    "tests/supernet/test_darts_primitives.py",
    "tests/utils/test_sharding.py",
    "tests/supernet/test_composed_darts.py",
    "tests/test_ops.py",
    "tests/evaluators/test_population.py",
    "tests/strategies/test_evolution.py",
)


def _rank(item) -> int:
    path = item.nodeid.split("::")[0]
    return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(config, items):
    items.sort(key=_rank)  # stable: the rest keep their collected order
    if os.environ.get("NAS_JAX_SLOW_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="slow on 2 CPU cores; set NAS_JAX_SLOW_TESTS=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
