"""Retraining from scratch: one architecture's standalone network, trained and tested.

``run_retrain(config, workdir)`` is what ``experiments/retrain.py`` calls. The architecture
is ``config.arch`` (a string in the space's own format) or the result of the search run in
``config.arch_from``. Training follows DARTS' evaluation recipe: SGD with momentum (Nesterov
optional), a cosine learning rate decayed to 0, weight decay, gradient clipping, optional
random crop, flip and cutout (drawn on device, per example), and for DARTS networks optional
drop-path (probability ramped linearly over the epochs, as DARTS does) and an auxiliary head.

One jitted step does everything for a step: the batch is drawn on device from the arrays
loaded once, augmented, and the update applied. A workdir holding a checkpoint resumes from
it: step ``i`` always uses ``fold_in(key, i)`` and the running metric sums are checkpointed,
so a run killed at any point and restarted ends with the same numbers and metrics.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from nas_jax import registry
from nas_jax.config import ConfigError, check_schema, search_config
from nas_jax.data.datasets import KNOWN_DATASETS, load_dataset
from nas_jax.evaluators.population import has_network, init_candidate, network_graphdef
from nas_jax.runner import open_run, say
from nas_jax.spaces.darts import DartsSpace
from nas_jax.train.augment import cutout, random_crop, random_flip
from nas_jax.train.steps import cross_entropy, draw_batch, make_apply
from nas_jax.utils.metrics import Progress, atomic_write, read_jsonl

RESULT_FILE = "retrain.json"
# What a search leaves in its workdir: run_search's best architecture, or the cell a
# gradient-based search (DARTS, GDAS) derived.
SEARCH_RESULT_FILES = ("best_architecture.json", "result.json")
AUX_SCOPE = "auxiliary_head"


def retrain_config() -> ml_collections.ConfigDict:
    """The full schema of a retraining run, with defaults (a small NB201 run on digits)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.arch = ""  # the architecture in the space's format (NB201 string, DARTS Genotype, ...)
    c.arch_from = ""  # or: a search workdir; its best_architecture.json is retrained
    c.dataset = ml_collections.ConfigDict(dict(
        name="digits", valid_fraction=0.2, data_dir="",
        train_on_valid=False))  # True: train on train + valid (DARTS' protocol); no valid score
    c.space = ml_collections.ConfigDict(search_config().space.to_dict())
    c.train = ml_collections.ConfigDict(dict(
        steps=600, epochs=0,  # one of them: epochs > 0 means epochs * (train size // batch)
        batch_size=64, learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
        grad_clip=5.0, eval_batch_size=512,
        crop_padding=0, flip=False, cutout=0,  # augmentation (images only); 0/False: off
        drop_path_prob=0.0, auxiliary_weight=0.0,  # DARTS networks only; 0: off
    ))
    c.log_every_steps = 50
    c.eval_every_steps = 0  # 0: score only at the end
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=100, max_to_keep=2))
    c.runtime = ml_collections.ConfigDict(dict(
        compilation_cache_dir="~/.cache/nas_jax/xla", progress_interval_s=10.0,
        threefry_partitionable=False))
    return c


def _nonneg(config, field: str, *, strict: bool = False) -> None:
    value = config
    for part in field.split("."):
        value = value[part]
    if (value <= 0 if strict else value < 0) or not math.isfinite(value):
        raise ConfigError(f"config.{field}={value!r}: must be {'> 0' if strict else '>= 0'}")


def _space_for_checks(config):
    try:
        registry.SPACES.check(config.space.name, "config.space.name")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    space = registry.SPACES.build(config.space.name, config.space)
    if not has_network(space):
        raise ConfigError(f"config.space.name={config.space.name!r}: no standalone network is "
                          "registered for this space")
    return space


def validate_retrain_config(config: ml_collections.ConfigDict) -> None:
    """Check ``config`` before anything is loaded or compiled; raises ``ConfigError`` naming
    the field."""
    check_schema(config, retrain_config(), "")
    if bool(config.arch) == bool(config.arch_from):
        raise ConfigError("config.arch / config.arch_from: give exactly one (an architecture "
                          "string, or a search workdir holding best_architecture.json)")
    if config.dataset.name not in KNOWN_DATASETS:
        raise ConfigError(f"config.dataset.name={config.dataset.name!r}: unknown dataset; "
                          f"allowed: {', '.join(KNOWN_DATASETS)}")
    if not 0.0 < config.dataset.valid_fraction < 1.0:
        raise ConfigError(f"config.dataset.valid_fraction={config.dataset.valid_fraction!r}: "
                          "must be in (0, 1)")
    space = _space_for_checks(config)
    if config.arch:
        try:
            space.from_string(config.arch)
        except (ValueError, KeyError, IndexError) as e:
            raise ConfigError(f"config.arch={config.arch!r}: not a {config.space.name} "
                              f"architecture: {e}") from None
    else:
        _read_search_result(config)
    t = config.train
    if (t.steps > 0) == (t.epochs > 0) or t.steps < 0 or t.epochs < 0:
        raise ConfigError(f"config.train.steps={t.steps}, config.train.epochs={t.epochs}: set "
                          "exactly one of them > 0 (the other 0)")
    for name in ("batch_size", "eval_batch_size", "learning_rate"):
        _nonneg(config, f"train.{name}", strict=True)
    for name in ("momentum", "weight_decay", "grad_clip", "crop_padding", "cutout",
                 "auxiliary_weight"):
        _nonneg(config, f"train.{name}")
    if not 0.0 <= t.drop_path_prob < 1.0:
        raise ConfigError(f"config.train.drop_path_prob={t.drop_path_prob!r}: must be in [0, 1)")
    for name in ("drop_path_prob", "auxiliary_weight"):
        if t[name] > 0 and not isinstance(space, DartsSpace):
            raise ConfigError(f"config.train.{name}={t[name]!r}: DARTS networks only "
                              f"(config.space.name='darts'); set it to 0 for "
                              f"{config.space.name!r}")
    for field in ("log_every_steps", "checkpoint.every_steps", "checkpoint.max_to_keep"):
        _nonneg(config, field, strict=True)
    _nonneg(config, "eval_every_steps")
    _nonneg(config, "runtime.progress_interval_s")


def _read_search_result(config) -> dict:
    folder = os.path.expanduser(config.arch_from)
    found = [os.path.join(folder, n) for n in SEARCH_RESULT_FILES
             if os.path.exists(os.path.join(folder, n))]
    if not found:
        raise ConfigError(f"config.arch_from={config.arch_from!r}: no "
                          f"{' or '.join(SEARCH_RESULT_FILES)} there; point it at a finished "
                          "search's --workdir")
    path = found[0]
    with open(path) as f:
        result = json.load(f)
    if result.get("space") != config.space.name:
        raise ConfigError(f"config.arch_from={config.arch_from!r}: that search ran space "
                          f"{result.get('space')!r}, but config.space.name="
                          f"{config.space.name!r}")
    return result


def resolve_arch(config, space) -> np.ndarray:
    """The architecture to retrain, ``int32[D]``: parsed ``config.arch`` or the search
    result in ``config.arch_from``."""
    if config.arch:
        return space.validate(space.from_string(config.arch))
    return space.validate(np.asarray(_read_search_result(config)["arch"], np.int32))


# ------------------------------------------------------------------ training program
@dataclasses.dataclass(frozen=True)
class RetrainSpec:
    """Everything a compiled retraining program depends on (hashable: the cache key)."""

    space: object
    arch: tuple[int, ...]
    steps: int
    steps_per_epoch: int
    batch_size: int
    learning_rate: float
    momentum: float
    nesterov: bool
    weight_decay: float
    grad_clip: float
    eval_batch_size: int
    crop_padding: int
    flip: bool
    cutout: int
    crop_fill: tuple[float, ...]
    drop_path_prob: float
    auxiliary_weight: float

    @property
    def network_options(self) -> dict:
        return {"auxiliary": True} if self.auxiliary_weight > 0 else {}

    def schedule(self) -> optax.Schedule:
        """Cosine from ``learning_rate`` to 0 over all steps (DARTS steps it per epoch)."""
        return optax.cosine_decay_schedule(self.learning_rate, max(self.steps, 1))

    def drop_prob(self, step):
        """DARTS' ramp: ``drop_path_prob * epoch / epochs``, constant within an epoch."""
        epochs = max(-(-self.steps // self.steps_per_epoch), 1)
        return self.drop_path_prob * (step // self.steps_per_epoch) / epochs

    def optimizer(self) -> optax.GradientTransformation:
        """Clip the gradient norm, add ``weight_decay * w``, SGD with momentum (torch order)."""
        chain = [optax.clip_by_global_norm(self.grad_clip)] if self.grad_clip > 0 else []
        if self.weight_decay > 0:
            chain.append(optax.add_decayed_weights(self.weight_decay))
        chain.append(optax.sgd(self.schedule(), momentum=self.momentum or None,
                               nesterov=self.nesterov))
        return optax.chain(*chain)


class RetrainProgram:
    """The jitted pieces of one retraining: init, one training step, one eval batch."""

    def __init__(self, spec: RetrainSpec):
        self.spec = spec
        options = spec.network_options
        graphdef = network_graphdef(spec.space, spec.arch, **options)
        self.graphdef = graphdef
        tx = spec.optimizer()
        is_darts = isinstance(spec.space, DartsSpace)

        def init(key):
            params, stats, k_data = init_candidate(spec.space, spec.arch, key, **options)
            return params, stats, tx.init(params), k_data

        def augment(key, x):
            k_crop, k_flip, k_cut = jax.random.split(key, 3)
            if spec.crop_padding:
                x = random_crop(k_crop, x, spec.crop_padding, jnp.asarray(spec.crop_fill))
            if spec.flip:
                x = random_flip(k_flip, x)
            if spec.cutout:
                x = cutout(k_cut, x, spec.cutout)
            return x

        def step(params, stats, opt_state, sums, i, k_data, x_all, y_all):
            k_batch, k_noise = jax.random.split(k_data)
            k_aug, k_drop = jax.random.split(jax.random.fold_in(k_noise, i))
            x, y = draw_batch(k_batch, i, x_all, y_all, spec.batch_size)
            x = augment(k_aug, x)

            def loss_fn(p):
                model = nnx.merge(graphdef, p, stats, copy=True)
                kwargs = {}
                if is_darts and spec.drop_path_prob > 0:
                    kwargs = {"drop_path_prob": spec.drop_prob(i), "key": k_drop}
                out = model(x, train=True, **kwargs)
                logits, aux = out if spec.auxiliary_weight > 0 else (out, None)
                loss = cross_entropy(logits, y)
                total = loss if aux is None else loss + spec.auxiliary_weight * cross_entropy(
                    aux, y)
                return total, (loss, logits, nnx.state(model, nnx.BatchStat))

            grads, (loss, logits, stats_new) = jax.grad(loss_fn, has_aux=True)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            correct = jnp.mean(jnp.argmax(logits, -1) == y)
            sums = sums + jnp.stack([loss, correct, 1.0])
            return optax.apply_updates(params, updates), stats_new, opt_state, sums

        apply = make_apply(graphdef, None)

        def eval_batch(params, stats, x, y, mask):
            logits, _ = apply(params, stats, x, False)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
            return jnp.stack([jnp.sum(loss * mask), jnp.sum((jnp.argmax(logits, -1) == y) * mask)])

        # Op by op: it runs once per run, and compiling its hundreds of outputs costs more
        # than running them (NB201 C=16, N=5 standalone: 3.3 s against 6.6 s compiled).
        self.init = init
        self.step = jax.jit(step, donate_argnums=(0, 1, 2, 3))
        self.eval_batch = jax.jit(eval_batch)

    def evaluate(self, params, stats, x, y) -> dict[str, float]:
        """Accuracy and mean loss over all of ``(x, y)``: one compiled batch shape for every
        split (the last batch zero-padded and masked)."""
        n, b = int(x.shape[0]), self.spec.eval_batch_size
        total = jnp.zeros(2)
        for start in range(0, n, b):
            xb, yb = x[start:start + b], y[start:start + b]
            m = xb.shape[0]
            mask = jnp.arange(b) < m
            if m < b:
                xb = jnp.concatenate([xb, jnp.zeros((b - m,) + xb.shape[1:], xb.dtype)])
                yb = jnp.concatenate([yb, jnp.zeros((b - m,), yb.dtype)])
            total = total + self.eval_batch(params, stats, xb, yb, mask)
        loss, correct = np.asarray(total) / n
        return {"accuracy": float(correct), "loss": float(loss)}


@functools.lru_cache(maxsize=4)
def compiled_program(spec: RetrainSpec) -> RetrainProgram:
    """One ``RetrainProgram`` per spec and process (a resumed or repeated run reuses it)."""
    return RetrainProgram(spec)


def count_params(params: nnx.State) -> tuple[int, int]:
    """``(network, auxiliary head)`` parameter counts of a params tree."""
    net = aux = 0
    for path, value in nnx.to_flat_state(params):
        size = int(np.prod(value.shape))
        if path and path[0] == AUX_SCOPE:
            aux += size
        else:
            net += size
    return net, aux


def _spec(config, space, arch, dataset, train_size: int) -> RetrainSpec:
    t = config.train
    per_epoch = max(train_size // t.batch_size, 1)
    fill = -np.asarray(dataset.mean, np.float64) / np.asarray(dataset.std, np.float64)
    return RetrainSpec(
        space=space, arch=tuple(int(a) for a in arch),
        steps=int(t.steps or t.epochs * per_epoch), steps_per_epoch=per_epoch,
        batch_size=t.batch_size, learning_rate=float(t.learning_rate),
        momentum=float(t.momentum), nesterov=bool(t.nesterov),
        weight_decay=float(t.weight_decay), grad_clip=float(t.grad_clip),
        eval_batch_size=t.eval_batch_size, crop_padding=t.crop_padding, flip=bool(t.flip),
        cutout=t.cutout, crop_fill=tuple(float(v) for v in np.ravel(fill)),
        drop_path_prob=float(t.drop_path_prob), auxiliary_weight=float(t.auxiliary_weight))


def _check_data_fits(config, dataset) -> None:
    t = config.train
    if len(dataset.input_shape) != 3:
        for name in ("crop_padding", "flip", "cutout"):
            if t[name]:
                raise ConfigError(f"config.train.{name}={t[name]!r}: image augmentation needs "
                                  f"[H, W, C] inputs; {config.dataset.name} has "
                                  f"{tuple(dataset.input_shape)}")


def run_retrain(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Retrain (or resume retraining) the architecture of ``config`` in ``workdir``; write
    ``retrain.json``, metrics and checkpoints there, and return the result."""
    validate_retrain_config(config)
    workdir, ckpt, resuming, writer = open_run(config, workdir)

    dataset = load_dataset(config.dataset.name, data_dir=config.dataset.data_dir or None,
                           valid_fraction=config.dataset.valid_fraction, seed=config.seed)
    _check_data_fits(config, dataset)
    train_x, train_y = dataset.train.x, dataset.train.y
    if config.dataset.train_on_valid:
        train_x = jnp.concatenate([train_x, dataset.valid.x])
        train_y = jnp.concatenate([train_y, dataset.valid.y])
    space = registry.SPACES.build(config.space.name, config.space,
                                  input_shape=dataset.input_shape,
                                  num_classes=dataset.num_classes)
    arch = resolve_arch(config, space)
    spec = _spec(config, space, arch, dataset, int(train_y.shape[0]))
    try:
        program = compiled_program(spec)
    except ValueError as e:  # e.g. an auxiliary head on too small feature maps
        raise ConfigError(f"config.train.auxiliary_weight={config.train.auxiliary_weight}: "
                          f"{e}") from None

    params, stats, opt_state, k_data = program.init(jax.random.key(config.seed))
    sums = jnp.zeros(3)
    start, seconds = 0, 0.0
    if resuming:
        state, meta = ckpt.restore({"params": params, "stats": stats, "opt_state": opt_state,
                                    "sums": sums}, with_meta=True)
        params, stats, opt_state, sums = (state[k] for k in ("params", "stats", "opt_state",
                                                             "sums"))
        start, seconds = int(meta["step"]), float(meta["seconds"])
        say(f"resuming {workdir} from step {start}/{spec.steps}")
    writer.truncate_after(start)
    say(f"retraining {space.to_string(arch)}: {spec.steps} steps of batch {spec.batch_size} "
        f"on {jax.default_backend()} (the first step includes compiling, unless cached)")

    progress = Progress(spec.steps, start=start, name="retrain",
                        interval_s=config.runtime.progress_interval_s)
    schedule = spec.schedule()
    t0 = time.time()
    for i in range(start, spec.steps):
        params, stats, opt_state, sums = program.step(params, stats, opt_state, sums, i, k_data,
                                                      train_x, train_y)
        done = i + 1
        row = {}
        if done % config.log_every_steps == 0 or done == spec.steps:
            loss, correct, count = np.asarray(sums)
            row = {"train_loss": loss / count, "train_accuracy": correct / count,
                   "learning_rate": float(schedule(i)),
                   "drop_path_prob": float(spec.drop_prob(i))}
            sums = jnp.zeros(3)
        if config.eval_every_steps and (done % config.eval_every_steps == 0
                                        or done == spec.steps):
            held_out = dataset.test if config.dataset.train_on_valid else dataset.valid
            name = "test" if config.dataset.train_on_valid else "valid"
            scores = program.evaluate(params, stats, held_out.x, held_out.y)
            row.update({f"{name}_{k}": v for k, v in scores.items()})
        if row:
            writer.write(done, row)
        if done % config.checkpoint.every_steps == 0 or done == spec.steps:
            ckpt.save(done, {"params": params, "stats": stats, "opt_state": opt_state,
                             "sums": sums},
                      meta={"step": done, "seconds": seconds + time.time() - t0})
        if jax.process_index() == 0:
            progress.update(done, row or None)
    seconds += time.time() - t0
    ckpt.close()

    result = _result(config, space, arch, spec, program, params, stats, dataset, seconds)
    if start < spec.steps or not _has_final_row(writer.path):  # not twice on a rerun
        writer.write(spec.steps, {k: result[k] for k in ("test_accuracy", "test_loss")})
    writer.close()
    if jax.process_index() == 0:
        atomic_write(os.path.join(workdir, RESULT_FILE),
                     lambda f: f.write(json.dumps(result, indent=2, sort_keys=True) + "\n"))
        width = max(map(len, result))
        print("\n".join(f"{k:<{width}}  {v}" for k, v in sorted(result.items())), flush=True)
    return result


def _has_final_row(path: str) -> bool:
    rows = read_jsonl(path) if os.path.exists(path) else []
    return bool(rows) and "test_accuracy" in rows[-1]


def _result(config, space, arch, spec, program, params, stats, dataset, seconds) -> dict:
    """retrain.json: scores, parameter counts (checked against ``space.num_params``), FLOPs."""
    test = program.evaluate(params, stats, dataset.test.x, dataset.test.y)
    valid = None
    if not config.dataset.train_on_valid:
        valid = program.evaluate(params, stats, dataset.valid.x, dataset.valid.y)
    num_params, aux_params = count_params(params)
    expected = space.num_params(arch)
    if num_params != expected:
        # DARTS: a node whose two slots pick the same input and op holds that op once in the
        # standalone network (its output doubled); DARTS' model.py, and num_params, two copies.
        message = (f"the network has {num_params} parameters (without the auxiliary head) but "
                   f"space.num_params says {expected}")
        if not isinstance(space, DartsSpace):
            raise RuntimeError(message)
        logging.warning("%s: a node repeats an (input, op) pair, held once here", message)
    finite = all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(params))
    return {
        "space": config.space.name,
        "arch": [int(a) for a in arch],
        "arch_string": space.to_string(arch),
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "valid_accuracy": None if valid is None else valid["accuracy"],
        "valid_loss": None if valid is None else valid["loss"],
        "num_params": num_params,
        "num_params_space": expected,
        "aux_params": aux_params,
        "flops": int(space.flops(arch)),
        "steps": spec.steps,
        "epochs": spec.steps / spec.steps_per_epoch,
        "seconds": round(seconds, 3),
        "finite": finite,
        "backend": jax.default_backend(),
    }
