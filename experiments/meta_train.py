"""Meta-training runs; a workdir that holds a checkpoint is resumed.

- A task-conditioned controller: ``python experiments/meta_train.py
  --config=configs/meta_controller_synthetic.py --workdir=/tmp/meta``; the trained controller
  is saved in ``<workdir>/controller``.
- MetaNAS and its few-shot baselines (configs with ``method = "metanas"``): ``python
  experiments/meta_train.py --config=configs/metanas_glyphs.py --workdir=/tmp/metanas``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if __name__ == "__main__":  # before JAX starts: 2 MiB pages for XLA's buffers (see the module)
    from nas_jax.utils.hugepages import reexec_with_huge_pages

    reexec_with_huge_pages()

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from nas_jax.config import ConfigError  # noqa: E402
from nas_jax.meta.meta_train import run_meta_train  # noqa: E402
from nas_jax.meta.metanas_train import run_metanas  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).")
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and the controller go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # progress and results are printed
    try:
        config = _CONFIG.value
        run = run_metanas if config.get("method") == "metanas" else run_meta_train
        run(config, flags.FLAGS.workdir)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
