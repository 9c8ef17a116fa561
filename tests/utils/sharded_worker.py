"""Subprocess side of tests/utils/test_sharding.py: evaluates one tiny population with and
without a mesh and writes the results (and what the sharded programs looked like) to .npz.

Run by the test with ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` already set:
  meshes OUT [--network=mini|nb201]     all meshes on this process's N devices + the reference
  process OUT ADDRESS NUM PID           one of NUM processes joined by jax.distributed
"""

import argparse
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from nas_jax.evaluators import population  # noqa: E402
from nas_jax.spaces.nb201 import NB201Space  # noqa: E402
from nas_jax.train.steps import Recipe  # noqa: E402
from nas_jax.utils import sharding  # noqa: E402

CLASSES = 4
SPACE = NB201Space(channels=4, cells_per_stage=1, input_shape=(8, 8, 1), num_classes=CLASSES)
RECIPE = Recipe(steps=2, batch_size=8, optimizer="sgd", learning_rate=0.1, weight_decay=0.0,
                grad_clip=0.0, eval_batch_size=12)  # 12 leaves a masked last eval batch
KEY_SEED = 7  # the population's key is made after jax.distributed.initialize
METRICS = ("valid_accuracy", "valid_loss", "train_loss", "finite")
CONV_OUT = re.compile(r"f32\[(\d+),8,8,(\d+)\]\S* convolution\(")  # (batch, channels) out


class MiniSupernet(nnx.Module):
    """A stand-in for the NB201 supernet that compiles in seconds (NB201's training program
    takes ~35 s to compile on XLA:CPU): one mixed edge of NB201's ops with batch norm (so a
    batch split over ``data`` needs cross-device statistics) and a linear read-out."""

    def __init__(self, *, rngs):
        self.stem = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.conv1 = nnx.Conv(4, 4, (1, 1), rngs=rngs)
        self.conv3 = nnx.Conv(4, 4, (3, 3), rngs=rngs)
        self.head = nnx.Linear(8 * 8 * 4, CLASSES, rngs=rngs)

    def __call__(self, x, weights, *, train=False):
        h = jax.nn.relu(self.bn(self.stem(x), use_running_average=not train))
        pool = nnx.avg_pool(h, (3, 3), strides=(1, 1), padding="SAME")
        w = weights.mean(0)  # every edge's choice counts
        h = w[1] * h + w[2] * self.conv1(h) + w[3] * self.conv3(h) + w[4] * pool
        return self.head(h.reshape(h.shape[0], -1))


def use_mini_supernet():
    def build(space, arch=None, *, rngs):
        return MiniSupernet(rngs=rngs)

    population.build_network = build


def data():
    """Quadrant images (label = the bright quadrant) with noise: 32 train, 20 valid."""
    k_x, k_v = jax.random.split(jax.random.key(0))

    def make(key, n):
        y = jnp.arange(n) % CLASSES
        rows, cols = (y // 2)[:, None, None], (y % 2)[:, None, None]
        ii, jj = jnp.arange(8)[None, :, None], jnp.arange(8)[None, None, :]
        bright = ((ii // 4) == rows) & ((jj // 4) == cols)
        x = bright.astype(jnp.float32) + 0.3 * jax.random.normal(key, (n, 8, 8))
        return x[..., None], y

    return make(k_x, 32), make(k_v, 20)


def archs(n=8):
    return jax.vmap(SPACE.sample)(jax.random.split(jax.random.key(1), n))


def evaluate(execution, mesh=None, n=8, ev=None):
    """The first ``n`` candidates' results (candidate i's key does not depend on n)."""
    if ev is None:
        train, valid = data()
        ev = population.PopulationEvaluator(SPACE, train, valid, RECIPE, execution=execution,
                                            mesh=mesh)
    fitness, out = ev(jax.random.key(KEY_SEED), archs()[:n])
    return ev, {"fitness": np.asarray(fitness), **{m: np.asarray(out[m]) for m in METRICS}}


def save(path, results):
    flat = {f"{name}/{k}": v for name, res in results.items() for k, v in res.items()}
    np.savez(path, **flat)


def run_meshes(out):
    """Unsharded vmap and loop, then vmap on three meshes and loop on a 2-device mesh."""
    assert jax.device_count() == 8, jax.devices()
    results = {"vmap": evaluate("vmap")[1], "loop": evaluate("loop")[1]}
    evaluators = {}
    for c, d in ((8, 1), (4, 2), (2, 4)):
        mesh = sharding.make_mesh(c, d)
        ev, results[f"vmap_{c}x{d}"] = evaluate("vmap", mesh)
        evaluators[c, d] = ev
        # What the evaluator ran: the population split over `candidates` (8 // c rows per
        # device); batch statistics summed across devices only when `data` splits the batch.
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(KEY_SEED), i))(
            jnp.arange(8))
        placed = sharding.put((keys, jax.vmap(SPACE.one_hot)(archs())),
                              sharding.candidate_sharding(mesh))
        compiled = ev._batched.lower(*placed, *ev._mesh_data).compile()
        hlo = compiled.as_text()
        acc = ev._batched(*placed, *ev._mesh_data)["valid_accuracy"]
        results[f"vmap_{c}x{d}"].update(
            spec=np.array(str(acc.sharding.spec)),
            shard_rows=np.array(sorted({s.data.shape[0] for s in acc.addressable_shards})),
            num_devices=np.array(len(acc.sharding.device_set)),
            all_reduces=np.array(hlo.count("all-reduce(")),
            conv_shapes=np.array(sorted(set(CONV_OUT.findall(hlo))), dtype=np.int64),
            input_specs=np.array([str(s.spec) for s in compiled.input_shardings[0][:2]]))
    # 6 candidates on 4 slices: padded to 8 (the program above), the padding dropped.
    results["vmap_4x2_six"] = evaluate("vmap", n=6, ev=evaluators[4, 2])[1]
    two = sharding.make_mesh(2, 1, devices=jax.devices()[:2])
    ev, results["loop_2x1"] = evaluate("loop", two)
    results["loop_2x1"]["data_devices"] = np.array(sorted(d.id for d in ev._mesh_data))
    save(out, results)


def run_process(out, address, num_processes, process_id):
    """One process of a multi-process run with 2 devices each: vmap on the mesh
    (candidates=processes, data=2), and the loop split between processes (one device each)."""
    sharding.initialize_distributed(address, num_processes, process_id)
    assert jax.process_count() == num_processes and jax.device_count() == 2 * num_processes
    firsts = [d for d in jax.devices() if d.id == min(e.id for e in jax.devices()
                                                        if e.process_index == d.process_index)]
    results = {}
    loop, results["loop"] = evaluate("loop", sharding.make_mesh(num_processes, 1, firsts))
    results["loop_five"] = evaluate("loop", n=5, ev=loop)[1]  # shares of 3 and 2
    results["vmap"] = evaluate("vmap", sharding.make_mesh(num_processes, 2))[1]
    results["meta"] = {"process_index": np.array(jax.process_index()),
                       "share": np.array(list(sharding.process_share(8)))}
    save(out, results)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("meshes", "process"))
    parser.add_argument("out")
    parser.add_argument("rest", nargs="*")
    parser.add_argument("--network", choices=("mini", "nb201"), default="mini")
    parser.add_argument("--cache", default="", help="persistent compilation cache: programs "
                        "that recur (the same one on the same device) compile once")
    args = parser.parse_args()
    if args.cache:
        jax.config.update("jax_compilation_cache_dir", args.cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if args.network == "mini":
        use_mini_supernet()
    with jax.threefry_partitionable(False):  # compiles parameter init faster on XLA:CPU
        if args.mode == "meshes":
            run_meshes(args.out)
        else:
            run_process(args.out, args.rest[0], int(args.rest[1]), int(args.rest[2]))


if __name__ == "__main__":
    main()
