"""Benchmarks, each side by side in one run: population-training throughput per execution
strategy (``--config=configs/benchmark_population.py``), seconds per search step of DARTS,
GDAS and random single-path training (``--config=configs/benchmark_darts.py``), or the
compile time and seconds per meta-step of MetaNAS per supernet execution
(``--config=configs/benchmark_metanas.py``), or the floor under the search steps: their units
timed alone and summed (``--config=configs/benchmark_floor.py``)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if __name__ == "__main__":  # before JAX starts: 2 MiB pages for XLA's buffers (see the module)
    from nas_jax.utils.hugepages import reexec_with_huge_pages

    reexec_with_huge_pages()

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/benchmark_population.py")
flags.DEFINE_string("workdir", None, "Optional: where benchmark.json is written.")
flags.mark_flags_as_required(["config"])


def _runner(kind):
    """The benchmark of a config's ``kind``, imported only when it runs: the MetaNAS one
    loads the dataset stack (TFDS), which the other two do without (e.g. on a GPU machine
    with only JAX's own packages and ml_collections)."""
    if kind == "search":
        from nas_jax.search_benchmark import run_search_benchmark

        return run_search_benchmark
    if kind == "floor":
        from nas_jax.floor_benchmark import run_floor_benchmark

        return run_floor_benchmark
    if kind == "metanas":
        from nas_jax.meta.metanas_benchmark import run_metanas_benchmark

        return run_metanas_benchmark
    from nas_jax.benchmark import run_benchmark

    return run_benchmark


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    run = _runner(_CONFIG.value.get("kind"))
    run(_CONFIG.value, flags.FLAGS.workdir, log=lambda s: print(s, flush=True))


if __name__ == "__main__":
    app.run(main)
