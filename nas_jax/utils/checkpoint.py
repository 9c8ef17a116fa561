"""Crash-safe checkpoints: a thin wrapper over orbax `CheckpointManager`.

Each step directory holds two items: `state`, a pytree of arrays (jax/numpy arrays, typed PRNG
keys, python scalars) saved with `StandardSave`, and `meta`, a small JSON dict (host-side history,
run info) saved with `JsonSave`.

Crash safety: orbax writes a step into `<step>.orbax-checkpoint-tmp` and renames it to `<step>`
only when every file is written, so a process killed mid-save leaves the previous step intact and
a tmp directory that `latest_step()` ignores; it is deleted the next time a `Checkpointer` opens
the directory. Saving is synchronous by default: when `save` returns, the step is on disk.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Self

import jax
import numpy as np
import orbax.checkpoint as ocp

_STATE = "state"
_META = "meta"


def _abstract_leaf(x: Any) -> Any:
    """Describes one leaf of `like` as a restore target that keeps its type.

    `ocp.utils.to_shape_dtype_struct` turns a typed PRNG key into `uint32[..., 2]`, and orbax
    rejects numpy scalars as targets, so leaves are mapped by hand: jax arrays (typed keys
    included) become `ShapeDtypeStruct`s with their sharding, numpy scalars 0-d arrays, and
    numpy arrays, python scalars and existing `ShapeDtypeStruct`s stay as they are.
    """
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    if isinstance(x, np.generic):
        return np.asarray(x)
    return x


def _empty(x: Any) -> bool:
    """A zero-size array leaf: orbax cannot write one, so it is stored as nothing."""
    return isinstance(x, (jax.Array, np.ndarray, jax.ShapeDtypeStruct)) and x.size == 0


def _storable(tree: Any) -> Any:
    """`tree` with its zero-size array leaves replaced by None (an empty subtree)."""
    return jax.tree.map(lambda x: None if _empty(x) else x, tree)


def abstract_tree(like: Any) -> Any:
    """Returns the restore target for a pytree `like` (same structure, leaves made abstract;
    zero-size leaves, which are not stored, as None)."""
    return jax.tree.map(lambda x: None if _empty(x) else _abstract_leaf(x), like)


def _restore_leaf_type(like: Any, restored: Any) -> Any:
    """Turns 0-d arrays restored for numpy-scalar leaves back into numpy scalars, and rebuilds
    zero-size leaves (not stored) from `like`."""
    if _empty(like):
        return np.zeros(like.shape, like.dtype) if isinstance(like, np.ndarray) else \
            jax.numpy.zeros(like.shape, like.dtype)
    if isinstance(like, np.generic):
        return np.asarray(restored, dtype=like.dtype)[()]
    return restored


def _jsonable(x: Any) -> Any:
    """Converts numpy/jax scalars and containers in `x` to plain python for JSON."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (jax.Array, np.ndarray, np.generic)):
        arr = np.asarray(x)
        return arr.item() if arr.ndim == 0 else arr.tolist()
    return x


class Checkpointer:
    """Saves and restores `(tree, meta)` per step in `directory`, keeping the newest few.

    Args:
      directory: where step directories live; created if missing, made absolute.
      max_to_keep: how many of the newest steps are kept on disk.
      save_interval_steps: `save` only writes steps that are multiples of this (unless forced;
        the very first save of an empty directory is always written).
      async_save: if True, `save` returns once arrays are copied to host and the write finishes
        in the background (call `wait()` before relying on it). Default False: `save` returning
        means the step is complete on disk, which is what a resume after SIGKILL relies on.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int = 2,
        save_interval_steps: int = 1,
        async_save: bool = False,
    ):
        self.directory = os.path.abspath(os.fspath(directory))
        os.makedirs(self.directory, exist_ok=True)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            save_interval_steps=save_interval_steps,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """Returns the newest complete step, or None when there is none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Returns every complete step on disk, ascending."""
        return sorted(self._manager.all_steps())

    def save(
        self, step: int, tree: Any, *, meta: Mapping[str, Any] | None = None, force: bool = False
    ) -> bool:
        """Saves `tree` (and the JSON-able `meta` dict) as `step`; returns whether it was written.

        `meta` may hold numpy/jax scalars (converted to python); NaN/inf are kept (python's json
        writes and reads them back). Steps off the save interval are skipped unless `force`. A
        step already on disk is never overwritten (returns False), so a resumed run may re-save
        its final step safely.
        """
        step = int(step)
        if step in self._manager.all_steps():
            return False
        args = ocp.args.Composite(
            **{
                _STATE: ocp.args.StandardSave(_storable(tree)),
                _META: ocp.args.JsonSave(_jsonable(dict(meta or {}))),
            }
        )
        return bool(self._manager.save(step, args=args, force=force))

    def restore(self, like: Any, step: int | None = None, *, with_meta: bool = False) -> Any:
        """Restores the tree saved at `step` (None: the latest) with the structure of `like`.

        `like` is a pytree with the saved structure: concrete arrays (their sharding is used for
        placement) or `jax.ShapeDtypeStruct`s, e.g. from `jax.eval_shape`. Tuples stay tuples,
        typed PRNG keys stay typed keys. Returns the tree, or `(tree, meta)` when `with_meta`.

        Raises:
          FileNotFoundError: there is no such complete step.
        """
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"No checkpoint in {self.directory}.")
        elif int(step) not in self._manager.all_steps():
            raise FileNotFoundError(
                f"No checkpoint for step {step} in {self.directory}; have {self.all_steps()}."
            )
        items = {_STATE: ocp.args.StandardRestore(abstract_tree(like))}
        if with_meta:
            items[_META] = ocp.args.JsonRestore()
        restored = self._manager.restore(int(step), args=ocp.args.Composite(**items))
        tree = jax.tree.map(_restore_leaf_type, like, restored[_STATE])
        if with_meta:
            return tree, restored[_META]
        return tree

    def wait(self) -> None:
        """Blocks until any background save has finished (a no-op for synchronous saving)."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases orbax's resources."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
