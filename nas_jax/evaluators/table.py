"""A tabular benchmark: every architecture's results held as device arrays, looked up in jit.

A ``Table`` is one ``.npz`` file: arrays ``archs int32[N, D]`` (one row per architecture,
see ``rows`` below), per-seed ``valid_accuracy``, ``test_accuracy``, ``valid_loss``,
``train_loss``, ``train_seconds`` (``float32[N, S]``; NaN where a row has fewer seeds, always
after its measured ones; NaN losses/times where a source does not record them), per-row
``params`` and ``flops`` (``int64[N]``), and ``metadata``, a JSON string: format and version,
the space (class, module, constructor fields), dataset, recipe, seeds, commit, date, source,
``rows`` and how complete the table is. ``rows`` is ``"canonical"`` (one row per class of
``space.canonical``; an architecture is looked up through its class) or ``"architectures"``
(one row per integer vector, as NAS-Bench-201 trained every cell separately).

``TableEvaluator`` turns a table into ``fitness, metrics = evaluator(key, archs)``: the
fitness of a candidate is its valid accuracy under one seed drawn with ``key`` (as
NAS-Bench-201's API answers a search), and the lookup is a jittable gather through a dense
index over the whole space (mixed-radix code -> row), or sorted codes and ``searchsorted``
for spaces too large for a dense index.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import importlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from nas_jax.spaces.base import SearchSpace
from nas_jax.utils.metrics import atomic_write

FORMAT, VERSION = "nas_jax.table", 1
PER_SEED = ("valid_accuracy", "test_accuracy", "valid_loss", "train_loss", "train_seconds")
PER_ROW = ("params", "flops")
ROWS = ("canonical", "architectures")
DENSE_LIMIT = 1 << 22  # spaces up to this size get a dense int32 index (16 MiB)
BUILD_COMMAND = "python experiments/build_table.py --config={config} --out={path}"
# The tables the repository ships, by file name, and the configs that build them.
SHIPPED_TABLES = {
    "nb201_c8n1_digits.npz": "configs/table_nb201_digits.py",
    "nb201_4ops_c8n1_digits.npz": "configs/table_nb201_4ops_digits.py",
}


class TableNotFoundError(FileNotFoundError):
    """No table file at the given path; the message gives the command that builds one."""


def not_found_message(path: str) -> str:
    """Where ``path`` names a shipped table (by file name), the command that rebuilds it;
    otherwise the command with a table config to choose."""
    config = SHIPPED_TABLES.get(os.path.basename(str(path)))
    command = BUILD_COMMAND.format(config=config or "CONFIG", path=path)
    choose = ("" if config else
              f" with CONFIG the table's build config (e.g. {', '.join(SHIPPED_TABLES.values())})")
    return (f"no table at {path}; build it with `{command}`{choose} (add "
            "--limit=N for a quick partial table, --synthetic for a synthetic one, or "
            "--from_nats=PATH to convert NAS-Bench-201/NATS-Bench results)")


# ----------------------------------------------------------------- spaces and codes
def arch_codes(space: SearchSpace, archs) -> np.ndarray:
    """Mixed-radix code of each architecture (its row in ``space.enumerate()``), int64."""
    archs = np.asarray(archs, np.int64).reshape(-1, space.num_decisions)
    return np.ravel_multi_index(tuple(archs.T), space.num_choices).astype(np.int64)


def has_canonical_form(space: SearchSpace) -> bool:
    """Whether distinct vectors of ``space`` can be the same architecture."""
    return type(space).canonical is not SearchSpace.canonical


@functools.lru_cache(maxsize=8)
def canonical_codes(space: SearchSpace, limit: int = DENSE_LIMIT) -> np.ndarray:
    """``int64[space.size]``: the code of each architecture's canonical representative."""
    if not has_canonical_form(space):
        if space.size > limit:
            raise ValueError(f"space has {space.size} architectures, more than limit={limit}")
        codes = np.arange(space.size, dtype=np.int64)
    else:
        codes = arch_codes(space, np.stack([space.canonical(a) for a in space.enumerate(limit)]))
    codes.flags.writeable = False  # shared through the cache
    return codes


def canonical_archs(space: SearchSpace, limit: int = DENSE_LIMIT) -> np.ndarray:
    """One representative per canonical class, ``int32[K, D]``, in increasing code order."""
    codes = np.unique(canonical_codes(space, limit))
    return np.stack(np.unravel_index(codes, space.num_choices), axis=1).astype(np.int32)


def space_metadata(space: SearchSpace, name: str = "") -> dict:
    """How to rebuild ``space``: its class, module and constructor fields (JSON-able)."""
    fields = {f.name: getattr(space, f.name) for f in dataclasses.fields(space) if f.init}
    return {"class": type(space).__name__, "module": type(space).__module__, "name": name,
            "fields": json.loads(json.dumps(fields))}


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def space_from_metadata(meta: dict) -> SearchSpace:
    """Rebuild the space recorded by ``space_metadata`` (only classes under nas_jax.spaces)."""
    module = meta.get("module", "")
    if not module.startswith("nas_jax.spaces."):
        raise ValueError(f"table space module {module!r} is not under nas_jax.spaces")
    cls = getattr(importlib.import_module(module), meta["class"])
    return cls(**{k: _tuples(v) for k, v in meta["fields"].items()})


def git_commit() -> str:
    """``git rev-parse HEAD`` of this checkout (``-dirty`` if it has changes), or 'unknown'."""
    import subprocess

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=repo, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty.strip() else "")


# ----------------------------------------------------------------------- the table
@dataclasses.dataclass(frozen=True, eq=False)
class Table:
    """Host-side (numpy) benchmark results; see the module docstring for the format."""

    archs: np.ndarray
    valid_accuracy: np.ndarray
    test_accuracy: np.ndarray
    valid_loss: np.ndarray
    train_loss: np.ndarray
    train_seconds: np.ndarray
    params: np.ndarray
    flops: np.ndarray
    metadata: dict

    def __post_init__(self):
        _validate(self, "table")

    @property
    def space(self) -> SearchSpace:
        return space_from_metadata(self.metadata["space"])

    @property
    def num_rows(self) -> int:
        return int(self.archs.shape[0])

    @property
    def num_seeds(self) -> int:
        return int(self.valid_accuracy.shape[1])

    @property
    def complete(self) -> bool:
        return bool(self.metadata["complete"])

    def test_accuracy_mean(self) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return np.nanmean(self.test_accuracy, axis=1)

    def save(self, path: str | os.PathLike) -> str:
        """Write the table as one ``.npz`` (atomically: temp file + rename); returns the path."""
        arrays = {name: getattr(self, name) for name in ("archs",) + PER_SEED + PER_ROW}
        arrays["metadata"] = np.array(json.dumps(self.metadata, sort_keys=True))
        return atomic_write(path, lambda f: np.savez_compressed(f, **arrays), binary=True)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Table:
        """Read and validate a table written by ``save``; errors name the file and the problem."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise TableNotFoundError(not_found_message(path))
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not a readable .npz table ({e})") from None
        needed = ("archs", "metadata") + PER_SEED + PER_ROW
        missing = [name for name in needed if name not in arrays]
        if missing:
            raise ValueError(f"{path}: not a {FORMAT} file; missing arrays: {', '.join(missing)}")
        try:
            metadata = json.loads(str(arrays.pop("metadata")))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: metadata is not valid JSON ({e})") from None
        try:
            return cls(metadata=metadata, **{k: arrays[k] for k in needed if k != "metadata"})
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


def make_table(space: SearchSpace, archs, *, valid_accuracy, test_accuracy, metadata: dict,
               valid_loss=None, train_loss=None, train_seconds=None, params=None, flops=None,
               rows: str = "canonical", space_name: str = "") -> Table:
    """Assemble a ``Table``: fills NaN for absent per-seed arrays, costs from the space's models
    (0 where it has none), and the metadata fields ``space``, ``rows``, counts and ``complete``."""
    archs = np.asarray(archs, np.int32)
    valid_accuracy = np.asarray(valid_accuracy, np.float32)
    nan = np.full(valid_accuracy.shape, np.nan, np.float32)

    def per_seed(x):
        return nan.copy() if x is None else np.asarray(x, np.float32)

    def cost(x, model):
        if x is not None:
            return np.asarray(x, np.int64)
        try:
            return np.array([model(a) for a in archs], np.int64)
        except NotImplementedError:
            return np.zeros(len(archs), np.int64)

    if rows == "canonical":
        total = len(np.unique(canonical_codes(space)))
    else:
        total = space.size
    meta = dict(metadata)
    meta.update(format=FORMAT, version=VERSION, space=space_metadata(space, space_name),
                rows=rows, num_rows=int(len(archs)), num_total=int(total),
                complete=bool(len(archs) == total), num_seeds=int(valid_accuracy.shape[1]))
    return Table(archs=archs, valid_accuracy=valid_accuracy,
                 test_accuracy=per_seed(test_accuracy), valid_loss=per_seed(valid_loss),
                 train_loss=per_seed(train_loss), train_seconds=per_seed(train_seconds),
                 params=cost(params, space.num_params), flops=cost(flops, space.flops),
                 metadata=meta)


def _validate(t: Table, where: str) -> None:
    """Shapes, dtypes, seed packing and metadata of a table; ValueError naming the problem."""
    meta = t.metadata
    for field in ("format", "version", "space", "rows", "num_rows", "complete", "dataset"):
        if field not in meta:
            raise ValueError(f"{where}: metadata has no {field!r}")
    if meta["format"] != FORMAT or meta["version"] != VERSION:
        raise ValueError(f"{where}: format {meta['format']!r} v{meta['version']}; this "
                         f"reader knows {FORMAT!r} v{VERSION}")
    if meta["rows"] not in ROWS:
        raise ValueError(f"{where}: metadata rows={meta['rows']!r}; allowed: {', '.join(ROWS)}")
    space = space_from_metadata(meta["space"])
    archs = t.archs
    if archs.ndim != 2 or archs.shape[1] != space.num_decisions or archs.dtype.kind not in "iu":
        raise ValueError(f"{where}: archs has shape {archs.shape} ({archs.dtype}); "
                         f"{type(space).__name__} needs int[N, {space.num_decisions}]")
    n = archs.shape[0]
    if n == 0 or n != meta["num_rows"]:
        raise ValueError(f"{where}: {n} rows, metadata num_rows={meta['num_rows']}")
    bad = ~np.all((archs >= 0) & (archs < np.asarray(space.num_choices)), axis=1)
    if bad.any():
        raise ValueError(f"{where}: row {int(np.argmax(bad))} is not an architecture of "
                         f"{type(space).__name__}: {archs[np.argmax(bad)].tolist()}")
    s = t.valid_accuracy.shape[1] if t.valid_accuracy.ndim == 2 else -1
    for name in PER_SEED:
        x = getattr(t, name)
        if x.shape != (n, s) or s < 1 or x.dtype.kind != "f":
            raise ValueError(f"{where}: {name} has shape {x.shape} ({x.dtype}); expected "
                             f"float[{n}, S] with the valid_accuracy's S={s}")
    for name in PER_ROW:
        x = getattr(t, name)
        if x.shape != (n,):
            raise ValueError(f"{where}: {name} has shape {x.shape}; expected ({n},)")
    for name in ("valid_accuracy", "test_accuracy"):
        present = ~np.isnan(getattr(t, name))
        unpacked = np.any(present[:, 1:] & ~present[:, :-1], axis=1) | ~present[:, 0]
        if unpacked.any():
            raise ValueError(f"{where}: {name} row {int(np.argmax(unpacked))} has no first seed "
                             "or a gap; measured seeds come first, NaN only after them")


# ------------------------------------------------------------------- the evaluator
def table_config_problem(path: str, space: SearchSpace | None = None) -> str | None:
    """Why ``path`` cannot serve as a table for ``space`` (None when it can); for config checks."""
    if not path:
        return "empty; " + not_found_message("PATH.npz")
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        return not_found_message(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["metadata"]))
        table_space = space_from_metadata(meta["space"])
    except (OSError, ValueError, KeyError, TypeError, ImportError, AttributeError) as e:
        return f"not a readable {FORMAT} file ({type(e).__name__}: {e})"
    if space is None:
        return None
    ops = getattr(table_space, "op_names", None)
    if type(table_space) is type(space) and ops != getattr(space, "op_names", None):
        return (f"the table's architectures choose among the ops {', '.join(ops)}; the "
                f"config's space among {', '.join(space.op_names)} (set config.space.ops to "
                "the table's)")
    if type(table_space) is not type(space) or table_space.num_choices != space.num_choices:
        return (f"the table is over {type(table_space).__name__} with num_choices="
                f"{table_space.num_choices}; the config's space is {type(space).__name__} "
                f"with num_choices={space.num_choices}")
    return None


@dataclasses.dataclass(frozen=True, eq=False)
class TableEvaluator:
    """``fitness, metrics = evaluator(key, archs)`` by table lookup (jittable, no training).

    Attributes:
      table: the benchmark.
      allow_partial: accept a table that lacks some architectures (they get fitness ``-inf``
        and ``missing=True``); otherwise such a table is refused.
      dense_limit: spaces up to this size get a dense index over every vector (an
        isomorphic vector finds its class's row); larger ones sorted codes of the table's
        rows and ``searchsorted`` (then only the listed vectors are found: query a
        ``canonical`` table of such a space with canonical vectors).
    """

    table: Table
    allow_partial: bool = False
    dense_limit: int = DENSE_LIMIT
    execution: str = dataclasses.field(default="table", init=False)

    def __post_init__(self):
        t, space = self.table, self.table.space
        if not t.complete and not self.allow_partial:
            meta = t.metadata
            raise ValueError(f"the table is partial ({meta['num_rows']} of {meta['num_total']} "
                             f"{meta['rows']} rows); finish building it or pass "
                             "allow_partial=True (config: allow_partial)")
        codes = arch_codes(space, t.archs)
        if len(np.unique(codes)) != len(codes):
            raise ValueError("the table lists an architecture twice")
        if space.size >= 2**31:
            raise ValueError(f"{type(space).__name__} has {space.size} architectures; table "
                             "codes are int32, so spaces must have fewer than 2**31")
        dense = space.size <= self.dense_limit
        if dense:
            row_of = np.full(space.size, -1, np.int32)
            row_of[codes] = np.arange(len(codes), dtype=np.int32)
            if t.metadata["rows"] == "canonical" and has_canonical_form(space):
                canon = canonical_codes(space)
                odd = canon[codes] != codes
                if odd.any():
                    raise ValueError(f"row {int(np.argmax(odd))} ({t.archs[np.argmax(odd)]}) is "
                                     "not its class's canonical representative")
                row_of = row_of[canon]
            index = {"dense": jnp.asarray(row_of)}
        else:
            order = np.argsort(codes)
            index = {"codes": jnp.asarray(codes[order], jnp.int32),
                     "rows": jnp.asarray(order, jnp.int32)}
        strides = np.cumprod((space.num_choices + (1,))[::-1])[::-1][1:]
        valid = np.nan_to_num(t.valid_accuracy, nan=-np.inf)
        with np.errstate(invalid="ignore"):
            arrays = dict(
                index, strides=jnp.asarray(strides, jnp.int32),
                choices=jnp.asarray(space.num_choices, jnp.int32),
                valid=jnp.asarray(valid), valid_loss=jnp.asarray(t.valid_loss),
                train_loss=jnp.asarray(t.train_loss), train_seconds=jnp.asarray(t.train_seconds),
                num_seeds=jnp.asarray(np.sum(~np.isnan(t.valid_accuracy), 1), jnp.int32),
                valid_mean=jnp.asarray(np.nanmean(t.valid_accuracy, 1)),
                test_mean=jnp.asarray(t.test_accuracy_mean()),
                params=jnp.asarray(t.params, jnp.float32), flops=jnp.asarray(t.flops, jnp.float32))
        object.__setattr__(self, "_arrays", arrays)
        object.__setattr__(self, "space", space)

    @classmethod
    def from_path(cls, path: str, *, space: SearchSpace | None = None,
                  allow_partial: bool = False) -> TableEvaluator:
        """Load the table at ``path``; when ``space`` is given, check that it is the table's."""
        problem = table_config_problem(path, space)
        if problem:
            if not os.path.isfile(os.path.expanduser(path or "")):
                raise TableNotFoundError(problem)
            raise ValueError(f"{path}: {problem}")
        evaluator = cls(Table.load(os.path.expanduser(path)), allow_partial=allow_partial)
        if space is not None and space != evaluator.space:
            logging.warning("table %s was built for %s; the search uses %s (costs and "
                            "shapes may differ)", path, evaluator.space, space)
        return evaluator

    @property
    def arrays(self) -> dict[str, jax.Array]:
        """The device arrays ``table_lookup`` reads (a pytree: pass it into jitted code)."""
        return self._arrays

    def rows(self, archs: jax.Array) -> jax.Array:
        """See ``table_rows`` (jitted)."""
        return _rows_jit(self._arrays, jnp.asarray(archs, jnp.int32))

    def lookup(self, key: jax.Array, archs: jax.Array):
        """See ``table_lookup``."""
        return table_lookup(self._arrays, key, archs)

    def fitness_fn(self, key: jax.Array, archs: jax.Array) -> jax.Array:
        """Pure, jittable ``float[P]`` fitness, a seed drawn per candidate (``lookup``'s first
        output); a scan that threads keys uses it (``nas_jax.compare.search_trace``)."""
        return self.lookup(key, archs)[0]

    def mean_fitness_fn(self, archs: jax.Array) -> jax.Array:
        """Key-free, jittable fitness: the mean valid accuracy over seeds (``-inf`` when
        missing), the ``fitness_fn(archs)`` that ``strategies.base.scan_search`` takes."""
        row = table_rows(self._arrays, archs)
        return jnp.where(row < 0, -jnp.inf, self._arrays["valid_mean"][jnp.maximum(row, 0)])

    def __call__(self, key: jax.Array, archs):
        return _lookup_jit(self._arrays, key, jnp.asarray(archs, jnp.int32))

    # ---------------------------------------------------------------- host side
    @property
    def best_test_accuracy(self) -> float:
        """The largest mean-over-seeds test accuracy in the table (the regret reference)."""
        return float(np.nanmax(self.table.test_accuracy_mean()))


def table_rows(arrays: dict, archs: jax.Array) -> jax.Array:
    """Row of each architecture, ``int32[P]`` (-1: not in the table, or not a valid vector)."""
    archs = jnp.asarray(archs, jnp.int32)
    ok = jnp.all((archs >= 0) & (archs < arrays["choices"]), axis=-1)
    codes = jnp.sum(jnp.where(ok[:, None], archs, 0) * arrays["strides"], axis=-1)
    if "dense" in arrays:
        row = arrays["dense"][codes]
    else:
        pos = jnp.searchsorted(arrays["codes"], codes)
        pos = jnp.minimum(pos, arrays["codes"].shape[0] - 1)
        row = jnp.where(arrays["codes"][pos] == codes, arrays["rows"][pos], -1)
    return jnp.where(ok, row, -1)


def table_lookup(arrays: dict, key: jax.Array, archs: jax.Array):
    """``(fitness float[P], metrics)``, pure and jittable: each candidate's valid accuracy
    under one of its seeds drawn with ``key``; metrics hold that seed's ``valid_accuracy``,
    losses and time, the means over seeds (``valid_accuracy_mean``, ``test_accuracy``), costs,
    ``missing`` (fitness ``-inf``, metrics NaN), ``seed_index`` and ``row``."""
    row = table_rows(arrays, archs)
    missing = row < 0
    r = jnp.maximum(row, 0)
    count = arrays["num_seeds"][r]
    u = jax.random.uniform(key, row.shape)
    seed = jnp.minimum((u * count).astype(jnp.int32), count - 1)
    valid = arrays["valid"][r, seed]

    def pick(x):
        return jnp.where(missing, jnp.nan, x)

    metrics = {
        "valid_accuracy": pick(valid), "valid_accuracy_mean": pick(arrays["valid_mean"][r]),
        "test_accuracy": pick(arrays["test_mean"][r]),
        "valid_loss": pick(arrays["valid_loss"][r, seed]),
        "train_loss": pick(arrays["train_loss"][r, seed]),
        "train_seconds": pick(arrays["train_seconds"][r, seed]),
        "params": pick(arrays["params"][r]), "flops": pick(arrays["flops"][r]),
        "missing": missing, "seed_index": seed, "row": row,
    }
    return jnp.where(missing, -jnp.inf, valid), metrics


# Shared by every evaluator: tables of the same shapes reuse one compiled program.
_rows_jit = jax.jit(table_rows)
_lookup_jit = jax.jit(table_lookup)


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second (table provenance)."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def table_summary(table: Table) -> str:
    """One line describing a table (for logs and reports)."""
    m = table.metadata
    best = float(np.nanmax(table.test_accuracy_mean()))
    return (f"{m['space']['class']} table on {m['dataset']} ({m.get('source', '?')}): "
            f"{m['num_rows']}/{m.get('num_total', '?')} {m['rows']} rows x {table.num_seeds} "
            f"seeds, best mean test accuracy {best:.4f}, commit {m.get('commit', '?')}")
