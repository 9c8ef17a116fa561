"""Where one search step spends its time: each compiled operation's share, grouped by kind.

Builds the step that ``experiments/benchmark.py --config=configs/benchmark_darts.py`` times
for ``--method`` (same supernet, batches and initial state), traces ``--calls`` calls with
``jax.profiler`` and prints time per call by category (convolution, reduce, reduce-window,
elementwise fusions, ...) and the longest operation groups (each convolution by its
``dim_labels``, window and shape; each fusion by what it holds):

    python experiments/profile_step.py --config=configs/benchmark_darts.py --method=darts1
    python experiments/profile_step.py --config=configs/benchmark_darts.py \\
        --config.channels=8 --config.cells_per_stage=1 --method=gdas_switch --top=20

Methods: the benchmark's single-program ones (darts1, darts2, gdas, gdas_switch,
random_path); the ``*_composed`` ones run many programs from the host and are timed per
unit by ``configs/benchmark_floor.py``. ``--trace_dir`` keeps the raw trace for TensorBoard's
or Perfetto's viewer.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if __name__ == "__main__":  # before JAX starts: 2 MiB pages, as the benchmark runs
    from nas_jax.utils.hugepages import reexec_with_huge_pages

    reexec_with_huge_pages()

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/benchmark_darts.py",
                                          "A search benchmark config.")
_METHOD = flags.DEFINE_string("method", "darts1", "The method whose step is profiled.")
_CALLS = flags.DEFINE_integer("calls", 2, "Traced calls (after one untraced warm-up call).")
_TOP = flags.DEFINE_integer("top", 30, "How many operation groups to print.")
_TRACE_DIR = flags.DEFINE_string("trace_dir", None, "Keep the raw trace here.")
_JSON = flags.DEFINE_string("json", None, "Also write the profile's rows to this file.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    import jax

    from nas_jax.search_benchmark import (
        FAST_COMPILE,
        benchmark_batches,
        benchmark_space,
        compiled_step,
    )
    from nas_jax.utils.profile import profile_program

    config = _CONFIG.value
    if config.get("kind") != "search":
        raise app.UsageError("--config: a search benchmark config (configs/benchmark_darts.py)")
    if _CALLS.value < 1:
        raise app.UsageError(f"--calls={_CALLS.value}: must be >= 1")
    space, described = benchmark_space(config)
    k_init, train, valid = benchmark_batches(config)
    with jax.threefry_partitionable(False):  # the runs' PRNG setting, as the benchmark
        try:
            step, state = compiled_step(space, _METHOD.value, k_init,
                                        FAST_COMPILE if config.fast_compile else None)
        except ValueError as e:
            raise app.UsageError(f"--method: {e}") from None
        profile = profile_program(step, state, train, valid, calls=_CALLS.value,
                                  carry=lambda args, out: (out[0], *args[1:]),
                                  trace_dir=_TRACE_DIR.value)
    print(f"{_METHOD.value} on {jax.default_backend()}, {described}, input "
          f"{tuple(config.input_shape)}, batch {config.batch_size}")
    print(profile.table(_TOP.value))
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump({"method": _METHOD.value, "config": config.to_dict(),
                       "wall_s": profile.wall_s, "rows": profile.rows}, f, indent=1)


if __name__ == "__main__":
    app.run(main)
