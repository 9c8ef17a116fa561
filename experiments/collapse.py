"""DARTS' collapse with and without remedies, scored on a tabular benchmark:
``python experiments/collapse.py --config=configs/collapse_nb201_4ops_digits.py
--workdir=/tmp/nas_collapse`` (resumable: rerun the same command)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if __name__ == "__main__":  # before JAX starts: 2 MiB pages for XLA's buffers (see the module)
    from nas_jax.utils.hugepages import reexec_with_huge_pages

    reexec_with_huge_pages()

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from nas_jax.collapse_study import run_collapse  # noqa: E402
from nas_jax.config import ConfigError  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).")
flags.DEFINE_string("workdir", None, "Where the runs, table, plots and JSON of the study go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    try:
        run_collapse(_CONFIG.value, flags.FLAGS.workdir)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
