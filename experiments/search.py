"""Run a neural architecture search: ``python experiments/search.py --config=configs/default.py
--workdir=/tmp/nas``. A workdir that holds a checkpoint is resumed.

Multi-process: ``--distributed`` in every process (JAX finds TPU pods and SLURM/MPI clusters
itself); by hand, e.g. two CPU processes on one machine, add ``--coordinator_address=
127.0.0.1:12345 --num_processes=2 --process_id=<0|1>``. The workdir must be shared."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if __name__ == "__main__":  # before JAX starts: 2 MiB pages for XLA's buffers (see the module)
    from nas_jax.utils.hugepages import reexec_with_huge_pages

    reexec_with_huge_pages()

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from nas_jax.config import ConfigError  # noqa: E402
from nas_jax.gradient_search import run_gradient_search  # noqa: E402
from nas_jax.runner import run_search  # noqa: E402
from nas_jax.strategies.gradient import METHODS as GRADIENT_METHODS  # noqa: E402
from nas_jax.utils.sharding import initialize_distributed  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).")
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and results are written.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host runs).")
flags.DEFINE_string("coordinator_address", None, "With --distributed: host:port of process 0 "
                    "(default: detected from the cluster).")
flags.DEFINE_integer("num_processes", None, "With --distributed: how many processes.")
flags.DEFINE_integer("process_id", None, "With --distributed: this process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    if f.distributed:
        initialize_distributed(f.coordinator_address, f.num_processes, f.process_id)
    elif f.coordinator_address or f.num_processes is not None or f.process_id is not None:
        raise app.UsageError("--coordinator_address/--num_processes/--process_id need "
                             "--distributed")
    logging.set_verbosity(logging.WARNING)  # progress and results are printed
    try:
        if _CONFIG.value.strategy.name in GRADIENT_METHODS:  # DARTS, GDAS: their own loop
            run_gradient_search(_CONFIG.value, flags.FLAGS.workdir)
        else:
            run_search(_CONFIG.value, flags.FLAGS.workdir)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
