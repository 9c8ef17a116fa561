"""Layer-wise chain spaces: a stack of convolutions (``MacroCNNSpace``) and an MLP
(``MLPSpace``). Each decision picks one entry of a tuple held by the space, so the integer
vector stores indices, never raw filter counts or names.
"""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np

from nas_jax.spaces.base import SearchSpace

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "tanh": jnp.tanh,
    "swish": jax.nn.swish,
    "sigmoid": jax.nn.sigmoid,
    "elu": jax.nn.elu,
    "identity": lambda x: x,
}
CNN_GENES = ("filters", "kernel_size", "stride", "activation", "skip")  # per-layer order
MLP_GENES = ("units", "activation")  # per-layer order, after the leading depth decision


def _check_choices(cls: str, field: str, values: tuple, positive: bool = True) -> None:
    if not isinstance(values, tuple) or not values:
        raise ValueError(f"{cls}.{field} must be a non-empty tuple, got {values!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"{cls}.{field} has duplicates: {values!r}")
    if positive and not all(isinstance(v, int) and v >= 1 for v in values):
        raise ValueError(f"{cls}.{field} must hold integers >= 1, got {values!r}")
    if not positive and not all(v in ACTIVATIONS for v in values):
        raise ValueError(f"{cls}.{field}={values!r}: unknown activation; known: "
                         f"{', '.join(ACTIVATIONS)}")


def _index(values: tuple, value, what: str, where: str) -> int:
    if value not in values:
        raise ValueError(f"{where}: {what} {value!r} is not a choice; allowed: "
                         f"{', '.join(map(str, values))}")
    return values.index(value)


@dataclasses.dataclass(frozen=True)
class MacroCNNSpace(SearchSpace):
    """A chain of ``num_layers`` convolutions, then global average pooling and a linear layer.

    Layer ``l`` (decisions ``5l .. 5l+4``: filters, kernel size, stride, activation, skip):
    ``h = act(conv(x))`` with a ``k^ndim`` kernel, 'SAME' padding, the stride on every
    spatial axis, and a bias (no BatchNorm). With skip on, ``h = act(conv(x)) + shortcut(x)``
    where the shortcut is the identity when shapes match (stride 1 and equal channels) and
    otherwise a strided 1x1 convolution with bias (a projection), so a skip is always
    applied. Output length per axis: ``ceil(n / stride)``.

    Attributes:
      num_layers: L, the number of convolutions.
      filters, kernel_sizes, strides, activations: the choices of each layer.
      ndim: 1 (signals, input (length, channels)) or 2 (images, input (H, W, channels)).
      input_shape: per-example input shape, ``ndim + 1`` entries.
      num_classes: width of the classifier.
    """

    num_choices: tuple[int, ...] = dataclasses.field(init=False, default=())
    num_layers: int = 4
    filters: tuple[int, ...] = (8, 16, 32, 64)
    kernel_sizes: tuple[int, ...] = (3, 5, 7)
    strides: tuple[int, ...] = (1, 2)
    activations: tuple[str, ...] = ("relu", "gelu", "tanh", "swish")
    ndim: int = 2
    input_shape: tuple[int, ...] = (32, 32, 3)
    num_classes: int = 10

    def __post_init__(self):
        name = type(self).__name__
        for field in ("num_layers", "num_classes"):
            if getattr(self, field) < 1:
                raise ValueError(f"{name}.{field} must be >= 1, got {getattr(self, field)}")
        for field in ("filters", "kernel_sizes", "strides"):
            _check_choices(name, field, getattr(self, field))
        _check_choices(name, "activations", self.activations, positive=False)
        if self.ndim not in (1, 2):
            raise ValueError(f"{name}.ndim must be 1 or 2, got {self.ndim}")
        if len(self.input_shape) != self.ndim + 1 or min(self.input_shape) < 1:
            raise ValueError(f"{name}.input_shape={self.input_shape}: needs {self.ndim + 1} "
                             f"positive entries (spatial..., channels) for ndim={self.ndim}")
        per_layer = (len(self.filters), len(self.kernel_sizes), len(self.strides),
                     len(self.activations), 2)
        object.__setattr__(self, "num_choices", per_layer * self.num_layers)

    # ------------------------------------------------------------ layers
    def layers(self, arch) -> list[tuple[int, int, int, str, bool]]:
        """Per layer ``(filters, kernel_size, stride, activation, skip)`` (values, not indices)."""
        arch = self.validate(arch).reshape(self.num_layers, len(CNN_GENES))
        return [(self.filters[f], self.kernel_sizes[k], self.strides[s], self.activations[a],
                 bool(sk)) for f, k, s, a, sk in arch]

    def to_string(self, arch) -> str:
        """E.g. ``conv(32,k5,s2,gelu,skip)|conv(16,k3,s1,relu)`` (``skip`` only when on)."""
        return "|".join(f"conv({f},k{k},s{s},{a}{',skip' if sk else ''})"
                        for f, k, s, a, sk in self.layers(arch))

    def from_string(self, text: str) -> np.ndarray:
        parts = text.strip().split("|")
        if len(parts) != self.num_layers:
            raise ValueError(f"MacroCNN string needs {self.num_layers} '|'-separated layers, "
                             f"got {len(parts)}: {text!r}")
        arch = []
        for i, part in enumerate(parts):
            m = re.fullmatch(r"conv\((\d+),k(\d+),s(\d+),(\w+)(,skip)?\)", part.strip())
            if not m:
                raise ValueError(f"layer {i}: bad MacroCNN layer {part!r}; expected "
                                 "conv(FILTERS,kK,sS,ACTIVATION[,skip])")
            where = f"layer {i}"
            arch += [_index(self.filters, int(m.group(1)), "filters", where),
                     _index(self.kernel_sizes, int(m.group(2)), "kernel size", where),
                     _index(self.strides, int(m.group(3)), "stride", where),
                     _index(self.activations, m.group(4), "activation", where),
                     int(m.group(5) is not None)]
        return self.validate(arch)

    # ------------------------------------------------------------- costs
    def _costs(self, arch) -> tuple[int, int]:
        *spatial, c_in = self.input_shape
        params = macs = 0
        for f, k, s, _, skip in self.layers(arch):
            spatial = [math.ceil(n / s) for n in spatial]
            out = math.prod(spatial)
            params += k ** self.ndim * c_in * f + f
            macs += out * k ** self.ndim * c_in * f
            if skip and (s != 1 or c_in != f):  # projection shortcut
                params += c_in * f + f
                macs += out * c_in * f
            c_in = f
        params += c_in * self.num_classes + self.num_classes
        macs += c_in * self.num_classes
        return params, macs

    def num_params(self, arch) -> int:
        """Conv weights and biases, projection shortcuts, and the classifier (see class doc)."""
        return int(self._costs(arch)[0])

    def flops(self, arch) -> int:
        """2 x multiply-adds per example: convolutions, projections, classifier (biases,
        activations, residual additions and pooling are not counted)."""
        return int(2 * self._costs(arch)[1])


@dataclasses.dataclass(frozen=True)
class MLPSpace(SearchSpace):
    """A multilayer perceptron of 1..``max_layers`` hidden dense layers, then a linear layer.

    Decision 0 is the depth (value ``d`` means ``d + 1`` hidden layers); then, for each of the
    ``max_layers`` possible layers, units and activation. Genes of layers beyond the depth are
    inactive: ``canonical`` zeroes them. Inputs are flattened; every dense layer has a bias.

    Attributes:
      max_layers: the deepest network.
      units, activations: the choices of each hidden layer.
      input_shape: per-example input; its product is the input width.
      num_classes: width of the classifier.
    """

    num_choices: tuple[int, ...] = dataclasses.field(init=False, default=())
    max_layers: int = 3
    units: tuple[int, ...] = (32, 64, 128, 256)
    activations: tuple[str, ...] = ("relu", "gelu", "tanh", "swish")
    input_shape: tuple[int, ...] = (28, 28, 1)
    num_classes: int = 10

    def __post_init__(self):
        name = type(self).__name__
        for field in ("max_layers", "num_classes"):
            if getattr(self, field) < 1:
                raise ValueError(f"{name}.{field} must be >= 1, got {getattr(self, field)}")
        _check_choices(name, "units", self.units)
        _check_choices(name, "activations", self.activations, positive=False)
        if not self.input_shape or min(self.input_shape) < 1:
            raise ValueError(f"{name}.input_shape={self.input_shape}: needs positive entries")
        per_layer = (len(self.units), len(self.activations))
        object.__setattr__(self, "num_choices", (self.max_layers,) + per_layer * self.max_layers)

    # -------------------------------------------------- jittable helpers
    def active_layers(self, arch: jax.Array) -> jax.Array:
        """``bool[max_layers]``: which hidden layers exist (jittable)."""
        return jnp.arange(self.max_layers) <= arch[0]

    def mask_inactive(self, arch: jax.Array) -> jax.Array:
        """Jittable ``canonical``: inactive layers' genes set to 0."""
        keep = jnp.concatenate([jnp.ones((1,), bool),
                                jnp.repeat(self.active_layers(arch), len(MLP_GENES))])
        return jnp.where(keep, arch, 0).astype(arch.dtype)

    # ------------------------------------------------------------ layers
    def layers(self, arch) -> list[tuple[int, str]]:
        """Active hidden layers as ``(units, activation)``."""
        arch = self.validate(arch)
        genes = arch[1:].reshape(self.max_layers, len(MLP_GENES))
        return [(self.units[u], self.activations[a]) for u, a in genes[: arch[0] + 1]]

    def canonical(self, arch) -> np.ndarray:
        arch = self.validate(arch).copy()
        arch[1 + (arch[0] + 1) * len(MLP_GENES):] = 0
        return arch

    def to_string(self, arch) -> str:
        """E.g. ``mlp(128,relu|64,tanh)``: the active layers only."""
        return "mlp(" + "|".join(f"{u},{a}" for u, a in self.layers(arch)) + ")"

    def from_string(self, text: str) -> np.ndarray:
        """Inverse of ``to_string``; inactive layers' genes are 0."""
        m = re.fullmatch(r"mlp\((.*)\)", text.strip())
        if not m:
            raise ValueError(f"MLP string must look like mlp(UNITS,ACT|...): {text!r}")
        parts = m.group(1).split("|") if m.group(1) else []
        if not 1 <= len(parts) <= self.max_layers:
            raise ValueError(f"MLP string has {len(parts)} layers; allowed 1..{self.max_layers}"
                             f": {text!r}")
        arch = np.zeros(self.num_decisions, np.int32)
        arch[0] = len(parts) - 1
        for i, part in enumerate(parts):
            lm = re.fullmatch(r"(\d+),(\w+)", part.strip())
            if not lm:
                raise ValueError(f"layer {i}: bad MLP layer {part!r}; expected UNITS,ACTIVATION")
            where = f"layer {i}"
            arch[1 + 2 * i] = _index(self.units, int(lm.group(1)), "units", where)
            arch[2 + 2 * i] = _index(self.activations, lm.group(2), "activation", where)
        return self.validate(arch)

    # ------------------------------------------------------------- costs
    def _widths(self, arch) -> list[int]:
        return ([math.prod(self.input_shape)] + [u for u, _ in self.layers(arch)]
                + [self.num_classes])

    def num_params(self, arch) -> int:
        """Weights and biases of every dense layer, classifier included."""
        w = self._widths(arch)
        return int(sum(a * b + b for a, b in zip(w[:-1], w[1:])))

    def flops(self, arch) -> int:
        """2 x multiply-adds per example (bias additions and activations not counted)."""
        w = self._widths(arch)
        return int(2 * sum(a * b for a, b in zip(w[:-1], w[1:])))
