"""Many devices and processes: one mesh from the config, placements, population splits.

The mesh has two axes: ``candidates`` (the population is split across devices; each
candidate trains on one slice of the mesh) and ``data`` (each candidate's batch is split).
Placements are ``NamedSharding``s over it; programs are ``jax.jit`` with in/out shardings
(no pmap), the candidates axis mapped by ``shard_map`` (see ``jit_over_candidates``). In a
multi-process run (``jax.distributed``) the mesh spans every process's devices; each
process computes the candidates on its own devices and the results are gathered, so every
process ends a round with the same full result.

A candidate's result never depends on the split: its key is ``fold_in(key, i)`` and
sharding changes only where the arithmetic runs (up to float summation order when the
batch is split over ``data``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

CANDIDATES = "candidates"
DATA = "data"


def mesh_shape(candidates: int, data: int, num_devices: int) -> tuple[int, int]:
    """The ``(candidates, data)`` mesh shape for ``num_devices``; ``candidates=-1`` takes
    every device the ``data`` axis leaves. Raises ``ValueError`` naming what to change."""
    if data < 1:
        raise ValueError(f"mesh data={data}: must be >= 1")
    if candidates == -1:
        if num_devices % data:
            raise ValueError(f"mesh data={data} does not divide the {num_devices} devices; "
                             f"use a divisor of {num_devices}")
        candidates = num_devices // data
    elif candidates < 1:
        raise ValueError(f"mesh candidates={candidates}: must be >= 1, or -1 for all devices")
    if candidates * data != num_devices:
        raise ValueError(f"mesh candidates={candidates} x data={data} = {candidates * data} "
                         f"devices, but {num_devices} are available; the product must equal "
                         "the device count (candidates=-1 takes all devices)")
    return candidates, data


def make_mesh(candidates: int = -1, data: int = 1, devices=None) -> Mesh:
    """A ``(candidates, data)`` mesh over ``devices`` (default: all, every process's).

    Devices are ordered by process, so a ``data`` row stays inside one process where the
    sizes allow (its per-step collectives then never cross hosts). Axis types are Auto
    (``Mesh(np.array(devices), names)``; ``jax.make_mesh`` would make them Explicit).
    """
    devices = list(jax.devices() if devices is None else devices)
    devices.sort(key=lambda d: (d.process_index, d.id))
    shape = mesh_shape(candidates, data, len(devices))
    return Mesh(np.array(devices, dtype=object).reshape(shape), (CANDIDATES, DATA))


def mesh_from_config(runtime) -> Mesh | None:
    """The mesh from ``runtime.mesh_candidates`` and ``runtime.mesh_data``, or None when it
    would have a single device (placement is then JAX's default)."""
    mesh = make_mesh(runtime.mesh_candidates, runtime.mesh_data)
    return mesh if mesh.size > 1 else None


def candidate_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (population) axis split over ``candidates``, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(CANDIDATES))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def constrain_batch(apply: Callable) -> Callable:
    """Wraps ``apply(params, stats, x, train)`` so the batch ``x`` it gets (drawn inside the
    candidate's step) is split over the mesh's ``data`` axis. For use inside
    ``jit_over_candidates``, whose mesh it refers to."""

    def constrained(params, stats, x, train):
        x = jax.lax.with_sharding_constraint(x, PartitionSpec(DATA))
        return apply(params, stats, x, train)

    return constrained


def jit_over_candidates(batched: Callable, mesh: Mesh, in_axes: tuple) -> Callable:
    """``jax.jit`` of ``batched`` (a function vmapped over candidates) where each
    ``candidates`` slice of the mesh runs it on its own block of candidates.

    Arguments with ``in_axes`` 0 are split over ``candidates``, those with None replicated;
    outputs are split over ``candidates``. The candidates axis is manual (``shard_map``), so
    candidates never communicate; ``data`` stays automatic for ``constrain_batch``. Letting
    the partitioner split the candidates axis itself fails with jaxlib 0.10.2: a vmapped
    convolution is a grouped one, and sharding its group dimension produces an invalid
    convolution ("output feature dimension ... divisible by feature_group_count").
    ``check_vma`` is off: the body has no collectives over candidates, and it would reject a
    ``lax.scan`` whose carry starts replicated (batch-norm statistics) and becomes
    per-candidate. Known cost: where a device holds several candidates and ``data`` > 1,
    XLA all-gathers the batch for some grouped convolutions and computes them whole on each
    device (openxla/xla#47945): correct, but that part is not data-parallel.
    """
    specs = tuple(PartitionSpec(CANDIDATES) if a == 0 else PartitionSpec() for a in in_axes)
    per_slice = jax.shard_map(batched, mesh=mesh, in_specs=specs,
                              out_specs=PartitionSpec(CANDIDATES), axis_names={CANDIDATES},
                              check_vma=False)
    return jax.jit(per_slice, in_shardings=tuple(NamedSharding(mesh, s) for s in specs),
                   out_shardings=candidate_sharding(mesh))


def padded_size(n: int, mesh: Mesh) -> int:
    """``n`` rounded up to a multiple of the ``candidates`` axis (jit needs equal shards)."""
    c = mesh.shape[CANDIDATES]
    return -(-n // c) * c


def pad_rows(tree, size: int):
    """Pads every leaf's leading axis to ``size`` by repeating its last row (the padding
    rows are real work whose results are dropped)."""

    def pad(x):
        extra = size - x.shape[0]
        if extra <= 0:
            return x
        return jnp.concatenate([x, jnp.repeat(x[-1:], extra, axis=0)])

    return jax.tree.map(pad, tree)


def _host(x):
    """A host (numpy) copy of a leaf; typed PRNG keys stay typed (numpy cannot hold them)."""
    return x if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else np.asarray(x)


def put(tree, sharding: NamedSharding):
    """Global arrays laid out by ``sharding`` from host values that every process holds
    identically (the population, the datasets). Works when the mesh spans processes: each
    process fills only the shards on its own devices."""

    def place(x):
        x = _host(x)
        if sharding.is_fully_addressable:
            return jax.device_put(x, sharding)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(place, tree)


def gather(tree):
    """Every leaf as a numpy array of its full value on every process (a leaf split across
    processes is all-gathered; others are copied to the host)."""

    def fetch(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(fetch, tree)


def process_share(n: int) -> range:
    """The population indices this process evaluates: a contiguous block of
    ``ceil(n / process_count)`` (the last blocks may be shorter or empty)."""
    size = math.ceil(n / jax.process_count())
    start = min(jax.process_index() * size, n)
    return range(start, min(start + size, n))


def allgather_shares(rows, n: int):
    """Joins each process's ``rows`` (a pytree of numpy arrays over its ``process_share(n)``)
    into the full ``[n, ...]`` result on every process."""
    if jax.process_count() == 1:
        return rows
    size = math.ceil(n / jax.process_count())
    padded = jax.tree.map(
        lambda x: np.concatenate([x, np.zeros((size - x.shape[0],) + x.shape[1:], x.dtype)]),
        rows)
    stacked = multihost_utils.process_allgather(padded, tiled=False)
    return jax.tree.map(lambda x: np.asarray(x).reshape((-1,) + x.shape[2:])[:n], stacked)


def local_devices(mesh: Mesh) -> list:
    """This process's devices in the mesh, in mesh order."""
    return [d for d in mesh.devices.flat if d.process_index == jax.process_index()]


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """``jax.distributed.initialize`` before any other JAX call of a multi-process run.

    With no arguments JAX detects the cluster (TPU pods, SLURM, Open MPI, ...); give all
    three to start processes by hand (e.g. several CPU processes on one machine, whose
    collectives go through gloo, JAX's default on CPU).
    """
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)


def to_global(tree, mesh: Mesh):
    """This process's copy of a tree that every process holds identically (a strategy state)
    as arrays replicated over ``mesh``: the form orbax saves and restores in multi-process
    runs (it refuses host-local arrays there). Other leaves (numpy, python) stay as they are."""
    whole = replicated(mesh)
    return jax.tree.map(lambda x: put(x, whole) if isinstance(x, jax.Array) else x, tree)


def to_local(tree):
    """The inverse of ``to_global``: each replicated array's copy on this process's first
    device, ready for functions jitted for one device."""
    return jax.tree.map(
        lambda x: x.addressable_shards[0].data if isinstance(x, jax.Array) else x, tree)
