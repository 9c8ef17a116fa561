"""Build a tabular benchmark (a ``.npz`` that ``TableEvaluator`` reads):

    python experiments/build_table.py --config=configs/table_nb201_digits.py --out=T.npz
        [--limit=N] [--shard=i/n]      # train; resumable; shards then --merge
    python experiments/build_table.py --out=T.npz --merge                # merge shards
    python experiments/build_table.py --out=T.npz --synthetic --config=...     # synthetic
    python experiments/build_table.py --out=T.npz --from_nats=PATH --nats_dataset=cifar10 \
        --nats_epochs=200                              # NAS-Bench-201 / NATS-Bench results
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

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).")
flags.DEFINE_string("out", None, "Where the table (.npz) is written.")
flags.DEFINE_integer("limit", None, "Only the first N canonical architectures (partial table).")
flags.DEFINE_string("shard", "0/1", "i/n: train chunks c with c % n == i (n processes).")
flags.DEFINE_bool("merge", False, "Only merge the finished parts into --out.")
flags.DEFINE_bool("synthetic", False, "Write a synthetic table over the config's space.")
flags.DEFINE_integer("synthetic_seed", 0, "Key of the synthetic table.")
flags.DEFINE_string("from_nats", None, "NAS-Bench-201 .pth / NATS-Bench tss file or folder.")
flags.DEFINE_string("nats_dataset", "cifar10", "cifar10, cifar10-valid, cifar100, ImageNet16-120")
flags.DEFINE_integer("nats_epochs", 200, "Training budget of the results: 12 or 200.")
flags.mark_flags_as_required(["out"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    f = flags.FLAGS
    from nas_jax.evaluators import table_build

    try:
        if f.from_nats:
            from nas_jax.evaluators.nats import read_nats

            table = read_nats(f.from_nats, dataset=f.nats_dataset, epochs=f.nats_epochs)
            table.save(f.out)
        elif f.synthetic:
            if _CONFIG.value is None:
                raise app.UsageError("--synthetic needs --config (the table's space)")
            table = table_build.synthetic_from_config(_CONFIG.value, f.synthetic_seed)
            table.save(f.out)
        elif f.merge:
            table = table_build.merge_parts(f.out, limit=f.limit)
        else:
            if _CONFIG.value is None:
                raise app.UsageError("--config is required to train a table")
            try:
                shard = table_build.parse_shard(f.shard)
            except ValueError as e:
                raise app.UsageError(str(e)) from None
            table = table_build.build_table(_CONFIG.value, f.out, limit=f.limit, shard=shard)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    except (FileNotFoundError, ImportError) as e:  # a missing input or optional dependency
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if table is not None:
        from nas_jax.evaluators.table import table_summary

        print(f"{f.out}: {table_summary(table)}")


if __name__ == "__main__":
    app.run(main)
