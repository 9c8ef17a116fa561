"""Run a neural architecture search: ``python experiments/search.py --config=configs/default.py
--workdir=/tmp/nas``. A workdir that holds a checkpoint is resumed."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from nas_jax.config import ConfigError  # noqa: E402
from nas_jax.runner import run_search  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).")
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and results are written.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host runs).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if flags.FLAGS.distributed:
        import jax

        jax.distributed.initialize()
    logging.set_verbosity(logging.WARNING)  # progress and results are printed
    try:
        run_search(_CONFIG.value, flags.FLAGS.workdir)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
