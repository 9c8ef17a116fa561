"""nas_jax.utils.sharding: mesh shapes, and sharded population evaluation equal to the
single-device one on 8 fake CPU devices and across 2 processes joined by jax.distributed.

The device tests run in subprocesses (tests/utils/sharded_worker.py): fake devices must be
set before JAX starts, and this pytest process's JAX has started already.
"""

import os
import socket
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from nas_jax.utils import sharding

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sharded_worker.py")
# Tiny programs compile ~2x faster on XLA:CPU without LLVM optimisation and fusion emitters;
# partitioning happens before either, so the sharding under test is the same.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
TIMEOUT_S = 120
METRICS = ("fitness", "valid_accuracy", "valid_loss", "train_loss", "finite")


def _env(num_devices: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices} {FAST_COMPILE}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _start(args, num_devices, workdir, name):
    """Starts a worker; its output goes to files (a full pipe would block it)."""
    log = open(workdir / f"{name}.log", "w+")  # closed in _finish
    proc = subprocess.Popen([sys.executable, WORKER, *args, f"--cache={workdir / name}"],
                            env=_env(num_devices), stdout=log, stderr=subprocess.STDOUT)
    proc.log = log
    return proc


def _finish(procs):
    """Waits for all workers; once one fails or the time limit passes the rest are killed
    (a process whose peer died would wait for it). Fails with the workers' stderr."""
    deadline = time.monotonic() + TIMEOUT_S
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        if any(p.poll() not in (None, 0) for p in procs):
            break
        time.sleep(0.1)
    outputs = []
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.log.seek(0)
        outputs.append((p.wait(), p.log.read()))
        p.log.close()
    failed = [f"worker {i} exited {rc}:\n{err[-4000:]}" for i, (rc, err) in enumerate(outputs)
              if rc != 0]
    assert not failed, f"time limit {TIMEOUT_S} s; " + "\n\n".join(failed)


def _load(path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _assert_same(result, name, reference, ref_name):
    """``name``'s metrics equal the first rows of ``ref_name``'s."""
    for m in METRICS:
        got = result[f"{name}/{m}"]
        want = reference[f"{ref_name}/{m}"][: len(got)]
        if m in ("fitness", "valid_accuracy", "finite"):
            np.testing.assert_array_equal(got, want, err_msg=f"{name} vs {ref_name}: {m}")
        else:
            np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6,
                                       err_msg=f"{name} vs {ref_name}: {m}")


def test_mesh_shape_and_errors():
    assert sharding.mesh_shape(-1, 1, 8) == (8, 1)
    assert sharding.mesh_shape(-1, 2, 8) == (4, 2)
    assert sharding.mesh_shape(2, 4, 8) == (2, 4)
    with pytest.raises(ValueError, match="candidates=3 x data=1 = 3 devices, but 8"):
        sharding.mesh_shape(3, 1, 8)
    with pytest.raises(ValueError, match="data=3 does not divide the 8 devices"):
        sharding.mesh_shape(-1, 3, 8)
    with pytest.raises(ValueError, match="data=0: must be >= 1"):
        sharding.mesh_shape(-1, 0, 8)
    with pytest.raises(ValueError, match="candidates=0: must be >= 1, or -1"):
        sharding.mesh_shape(0, 1, 8)


def test_single_device_mesh_and_helpers():
    mesh = sharding.make_mesh()
    assert mesh.axis_names == (sharding.CANDIDATES, sharding.DATA)
    assert mesh.shape[sharding.CANDIDATES] * mesh.shape[sharding.DATA] == jax.device_count()
    runtime = ml_collections.ConfigDict(dict(mesh_candidates=-1, mesh_data=1))
    assert (sharding.mesh_from_config(runtime) is None) == (jax.device_count() == 1)
    assert sharding.padded_size(5, mesh) % mesh.shape[sharding.CANDIDATES] == 0
    padded = sharding.pad_rows({"a": np.arange(3), "k": jax.random.split(jax.random.key(0))}, 4)
    np.testing.assert_array_equal(padded["a"], [0, 1, 2, 2])
    assert padded["k"].shape == (4,)
    assert list(sharding.process_share(5)) == list(range(5))  # one process: everything
    rows = {"x": np.arange(5.0)}
    assert sharding.allgather_shares(rows, 5) is rows
    np.testing.assert_array_equal(sharding.gather(rows)["x"], rows["x"])


@pytest.fixture(scope="module")
def meshes(tmp_path_factory):
    """One process with 8 fake devices: the population unsharded (vmap and loop), with vmap
    on meshes (8, 1), (4, 2), (2, 4), and with loop on a 2-device mesh."""
    workdir = tmp_path_factory.mktemp("meshes")
    out = workdir / "meshes.npz"
    _finish([_start(["meshes", str(out)], 8, workdir, "meshes")])
    return _load(out)


def test_sharded_population_equals_single_device(meshes):
    """Every split equals the unsharded result, and the programs are split as intended."""
    r = meshes
    _assert_same(r, "vmap", r, "loop")  # the two executions agree before any sharding
    for c, d in ((8, 1), (4, 2), (2, 4)):
        name = f"vmap_{c}x{d}"
        _assert_same(r, name, r, "vmap")
        assert str(r[f"{name}/spec"]) == str(PartitionSpec(sharding.CANDIDATES))
        assert list(r[f"{name}/input_specs"]) == [str(PartitionSpec(sharding.CANDIDATES))] * 2
        assert int(r[f"{name}/num_devices"]) == 8
        np.testing.assert_array_equal(r[f"{name}/shard_rows"], [8 // c])
        # Per device, convolutions hold 8 // c candidates (4 channels each, grouped) and the
        # batches drawn inside the steps (8) and the evaluation batches (12) are split d ways.
        # (XLA also all-gathers the batch for some grouped convolutions when a device holds
        # more than one candidate and d > 1, openxla/xla#47945: correct, redundant work.)
        batches, channels = zip(*r[f"{name}/conv_shapes"].tolist())
        assert set(channels) == {4 * (8 // c)}
        assert {8 // d, 12 // d} <= set(batches)
        assert d > 1 or set(batches) == {8, 12}
        # Cross-device reductions (batch statistics, losses, gradients) only for data > 1.
        assert (int(r[f"{name}/all_reduces"]) > 0) == (d > 1)
    _assert_same(r, "vmap_4x2_six", r, "vmap")
    assert r["vmap_4x2_six/fitness"].shape == (6,)
    _assert_same(r, "loop_2x1", r, "loop")
    np.testing.assert_array_equal(r["loop_2x1/data_devices"], [0, 1])  # both devices used


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_agree_with_one(meshes, tmp_path):
    """Two processes (2 CPU devices each) joined through jax.distributed split one
    population; each ends with the full result, equal to the single-process evaluation."""
    address = f"127.0.0.1:{_free_port()}"
    outs = [tmp_path / f"process{i}.npz" for i in range(2)]
    _finish([_start(["process", str(outs[i]), address, "2", str(i)], 2, tmp_path, f"p{i}")
             for i in range(2)])
    reference = meshes  # its unsharded "vmap" and "loop" rows
    for i, out in enumerate(outs):
        r = _load(out)
        assert int(r["meta/process_index"]) == i
        np.testing.assert_array_equal(r["meta/share"], range(4 * i, 4 * i + 4))
        for execution in ("vmap", "loop"):
            _assert_same(r, execution, reference, execution)
        assert r["loop_five/fitness"].shape == (5,)  # shares of 3 and 2 candidates
        _assert_same(r, "loop_five", reference, "loop")
