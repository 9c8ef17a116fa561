"""A search on a new task that starts from a meta-trained controller.

``experiments/search.py`` with ``--config.strategy.name=reinforce
--config.strategy.init_from=<meta_train workdir>`` runs the REINFORCE search on the config's
dataset starting from the controller meta-trained in that workdir (Wong et al., NeurIPS 2018:
transfer, then keep training by RL on the new task). The controller keeps its own policy
settings (hidden size, temperature, entropy bonus, ...); the search config sets
``batch_size`` and ``learning_rate``. The new task's context follows
``ConditionedController.finetune``:

- ``data`` mode: the set encoder's embedding of the dataset's training split, with the task
  features of the family the controller was meta-trained on (``mnist1d``: per-class
  statistics of the signals resampled to ``family.feature_length``; ``class_subset``:
  per-class mean and std of the flattened inputs, over all training examples). A controller
  meta-trained on the ``synthetic`` family has no features that a dataset could give, so it
  is refused.
- ``learned`` mode: a fresh embedding row (trained with the policy).
- ``none``: no context.

The search space must make the same decisions as the controller's (same space class and
fields); only the input shape and number of classes may differ.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from nas_jax.config import ConfigError
from nas_jax.evaluators.table import space_metadata
from nas_jax.meta.controller import FinetuneController, load_controller
from nas_jax.meta.tasks import Task, class_features, mnist1d_features
from nas_jax.spaces.base import SearchSpace
from nas_jax.utils.metrics import CONFIG_FILE

# Space fields that follow the dataset, not the decisions the controller makes.
DATA_FIELDS = ("input_shape", "num_classes")


def _decisions(space: SearchSpace) -> dict:
    meta = space_metadata(space)
    fields = {k: v for k, v in meta["fields"].items() if k not in DATA_FIELDS}
    return {"class": meta["class"], "fields": fields}


def load_family_config(workdir: str) -> dict:
    """The ``family`` section of a meta-training run's recorded config."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise ConfigError(f"config.strategy.init_from={workdir!r}: no {CONFIG_FILE} there; "
                          "give the --workdir of an experiments/meta_train.py run")
    with open(path, encoding="utf-8") as f:
        return json.load(f)["family"]


def task_from_dataset(controller, family: dict, dataset) -> Task:
    """The new task as the controller sees it: id -1 (unseen) and the features its family
    computes from the dataset's training split (zeros where the mode does not read them)."""
    shape = (dataset.num_classes, controller.feature_size)
    if controller.mode != "data":
        features = jnp.zeros(shape, jnp.float32)
    elif family.get("name") == "mnist1d":
        x = np.asarray(dataset.train.x)
        if x.ndim != 3 or x.shape[-1] != 1:
            raise ConfigError(
                f"config.dataset.name={dataset.name!r}: the controller in "
                "config.strategy.init_from was meta-trained on MNIST-1D tasks and computes its "
                f"task embedding from 1-D signals [N, L, 1]; this dataset's inputs are "
                f"{tuple(x.shape[1:])}. Use an MNIST-1D dataset, or a learned/none-mode controller")
        features = mnist1d_features(x, dataset.train.y, int(family["feature_length"]),
                                    dataset.num_classes)
    elif family.get("name") == "class_subset":
        features = class_features(dataset.train.x, dataset.train.y, dataset.num_classes)
    else:
        raise ConfigError(
            f"config.strategy.init_from: the controller was meta-trained on the "
            f"{family.get('name')!r} family, whose task features do not come from a dataset; "
            "a data-mode controller from it cannot start a search on config.dataset. Use one "
            "meta-trained on the mnist1d family, or a learned/none-mode controller")
    features = jnp.asarray(features, jnp.float32)
    if features.shape != shape:
        raise ConfigError(
            f"config.dataset.name={dataset.name!r}: task features {tuple(features.shape)}, but "
            f"the controller in config.strategy.init_from expects {shape} (a dataset with "
            f"{dataset.num_classes} classes and feature size {controller.feature_size})")
    return Task(task_id=jnp.asarray(-1, jnp.int32), features=features)


def meta_trained_strategy(strategy_cfg, space: SearchSpace, dataset,
                          key: jax.Array) -> FinetuneController:
    """The REINFORCE strategy on ``dataset`` that starts from the controller meta-trained in
    ``strategy_cfg.init_from`` (its ``controller/``), over ``space``; ``key`` draws a fresh
    embedding row in learned mode. Raises ConfigError naming the field on a mismatch."""
    workdir = os.path.abspath(os.path.expanduser(strategy_cfg.init_from))
    family = load_family_config(workdir)
    try:
        controller, params = load_controller(os.path.join(workdir, "controller"))
    except FileNotFoundError as e:
        raise ConfigError(f"config.strategy.init_from={strategy_cfg.init_from!r}: {e}") from None
    want, got = _decisions(controller.space), _decisions(space)
    if want != got:
        if want["class"] != got["class"]:
            diff = f"{got['class']} vs the controller's {want['class']}"
        else:
            diff = ", ".join(f"{k}={got['fields'].get(k)!r} (controller: "
                             f"{want['fields'].get(k)!r})"
                             for k in sorted(set(want["fields"]) | set(got["fields"]))
                             if want["fields"].get(k) != got["fields"].get(k))
        raise ConfigError(f"config.space: the search space makes other decisions than the "
                          f"controller meta-trained in config.strategy.init_from: {diff}. Set "
                          "config.space to the family's space (its meta_train config)")
    task = task_from_dataset(controller, family, dataset)
    return controller.finetune(params, task, key, space=space,
                               batch_size=int(strategy_cfg.batch_size),
                               learning_rate=float(strategy_cfg.learning_rate))
