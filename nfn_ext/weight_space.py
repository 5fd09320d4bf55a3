"""Weight spaces of MLPs and CNNs as batched, channelled tensors.

A network with ``L`` weight layers is stored as ``weights[l]`` of shape ``(B, C, n_{l+1}, n_l[, kh, kw])`` and
``biases[l]`` of shape ``(B, C, n_{l+1})`` (``B`` networks, ``C`` feature channels), which is the layout of
:class:`nfn.common.WeightSpaceFeatures`. A :class:`WeightSpaceSpec` records the architecture (layer shapes,
the activation and the module recipe), so that the symmetry group is known and a module can be rebuilt.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "tanh": nn.Tanh}
#: Symmetry group of each activation: positive scalings (positively homogeneous) or sign flips (odd).
ACTIVATION_GROUP = {"relu": "scale", "leaky_relu": "scale", "tanh": "sign"}
_SUPPORTED = "Linear, Conv2d, ReLU/LeakyReLU/Tanh, Dropout, Identity, AdaptiveAvgPool2d(1) and Flatten"


@dataclass(frozen=True)
class LayerSpec:
    """One weight layer: ``kind`` is ``"linear"`` or ``"conv"``; ``kernel`` is ``()`` for linear layers."""

    kind: str
    n_out: int
    n_in: int
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.n_out, self.n_in, *self.kernel)

    @property
    def filter_size(self) -> int:
        """Number of kernel positions (1 for linear layers)."""
        size = 1
        for k in self.kernel:
            size *= k
        return size

    def build(self) -> nn.Module:
        if self.kind == "linear":
            return nn.Linear(self.n_in, self.n_out)
        return nn.Conv2d(self.n_in, self.n_out, self.kernel, self.stride, self.padding, self.dilation)


@dataclass(frozen=True)
class WeightSpaceSpec:
    """Architecture of a network in a weight space.

    Args:
        layers: the weight layers in order.
        activation: ``"relu"``, ``"leaky_relu"`` or ``"tanh"``; it fixes the symmetry group.
        recipe: the ``nn.Sequential`` as tokens ``("layer", l)``, ``("act",)`` (``("act", slope)`` for
            LeakyReLU, each with its own slope), ``("dropout", p)``, ``("pool",)`` (global average pool),
            ``("flatten",)``.
        negative_slope: slope of the first LeakyReLU (each activation's own slope is in ``recipe``).
    """

    layers: tuple[LayerSpec, ...]
    activation: str
    recipe: tuple[tuple[Any, ...], ...]
    negative_slope: float = 0.01

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def dims(self) -> tuple[int, ...]:
        """``(n_0, n_1, ..., n_L)``: input width, hidden widths, output width."""
        return (self.layers[0].n_in, *(layer.n_out for layer in self.layers))

    @property
    def group(self) -> str:
        """``"scale"`` (permutations and positive scalings) or ``"sign"`` (permutations and sign flips)."""
        return ACTIVATION_GROUP[self.activation]

    def build_module(self) -> nn.Sequential:
        """A fresh ``nn.Sequential`` with this architecture."""
        modules: list[nn.Module] = []
        for token in self.recipe:
            if token[0] == "layer":
                modules.append(self.layers[token[1]].build())
            elif token[0] == "act":
                act = ACTIVATIONS[self.activation]
                if self.activation == "leaky_relu":
                    modules.append(act(token[1] if len(token) > 1 else self.negative_slope))
                else:
                    modules.append(act())
            elif token[0] == "dropout":
                modules.append(nn.Dropout(token[1]))
            elif token[0] == "pool":
                modules.append(nn.AdaptiveAvgPool2d(1))
            else:
                modules.append(nn.Flatten())
        return nn.Sequential(*modules)

    @classmethod
    def from_module(cls, module: nn.Module) -> WeightSpaceSpec:
        """Read the architecture of an ``nn.Sequential`` of supported layers.

        Raises:
            ValueError: for anything whose symmetry group is not the monomial group of the notes
                (non-sequential modules such as residual blocks, normalisation layers, mixed activations,
                convolutions flattened into a linear layer without global pooling, missing biases).
        """
        if not isinstance(module, nn.Sequential):
            raise ValueError(
                f"expected an nn.Sequential of {_SUPPORTED}, got {type(module).__name__}; modules with a "
                "custom forward (e.g. residual connections) do not carry the monomial symmetry"
            )
        layers: list[LayerSpec] = []
        recipe: list[tuple[Any, ...]] = []
        activation, slope = None, None
        act_since_layer, pooled, flat = True, False, False
        for child in module:
            if isinstance(child, nn.Linear | nn.Conv2d):
                if child.bias is None:
                    raise ValueError(
                        f"{type(child).__name__} without bias is not supported; expected bias=True"
                    )
                if layers and not act_since_layer:
                    raise ValueError(
                        f"expected an activation between weight layers {len(layers) - 1} and {len(layers)}"
                    )
                if (
                    layers
                    and layers[-1].kind == "conv"
                    and isinstance(child, nn.Linear)
                    and not (pooled and flat)
                ):
                    raise ValueError(
                        "a Linear layer after a Conv2d needs AdaptiveAvgPool2d(1) (+ Flatten) in between; "
                        "flattening feature maps ties weights to spatial positions and breaks the channel "
                        "permutation group"
                    )
                if isinstance(child, nn.Conv2d):
                    if layers and layers[-1].kind == "linear":
                        raise ValueError("expected all Conv2d layers before the Linear layers")
                    if child.groups != 1 or child.padding_mode != "zeros" or isinstance(child.padding, str):
                        raise ValueError("expected Conv2d with groups=1, zero padding and integer padding")
                    layers.append(
                        LayerSpec(
                            "conv",
                            child.out_channels,
                            child.in_channels,
                            tuple(child.kernel_size),
                            tuple(child.stride),
                            tuple(child.padding),
                            tuple(child.dilation),
                        )
                    )
                else:
                    layers.append(LayerSpec("linear", child.out_features, child.in_features))
                if len(layers) > 1 and layers[-1].n_in != layers[-2].n_out:
                    raise ValueError(
                        f"layer {len(layers) - 1} expects {layers[-1].n_in} inputs, "
                        f"but layer {len(layers) - 2} gives {layers[-2].n_out}"
                    )
                recipe.append(("layer", len(layers) - 1))
                act_since_layer = False
            elif isinstance(child, nn.ReLU | nn.LeakyReLU | nn.Tanh):
                name = {nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu", nn.Tanh: "tanh"}[type(child)]
                if activation is not None and name != activation:
                    raise ValueError(
                        f"mixed activations ({activation} and {name}) have no common symmetry group"
                    )
                activation = name
                if isinstance(child, nn.LeakyReLU):
                    slope = child.negative_slope if slope is None else slope
                    recipe.append(("act", child.negative_slope))
                else:
                    recipe.append(("act",))
                act_since_layer = True
            elif isinstance(child, nn.Dropout):
                recipe.append(("dropout", child.p))
            elif isinstance(child, nn.Identity):
                continue
            elif isinstance(child, nn.AdaptiveAvgPool2d) and child.output_size in (1, (1, 1)):
                if not layers or layers[-1].kind != "conv":
                    raise ValueError("AdaptiveAvgPool2d(1) is only supported after a Conv2d layer")
                recipe.append(("pool",))
                pooled = True
            elif isinstance(child, nn.Flatten):
                recipe.append(("flatten",))
                flat = pooled
            else:
                raise ValueError(f"unsupported layer {type(child).__name__}; expected only {_SUPPORTED}")
        if len(layers) < 2:
            raise ValueError(
                f"expected at least 2 weight layers (a hidden layer to act on), got {len(layers)}"
            )
        if activation is None:
            raise ValueError("expected a ReLU, LeakyReLU or Tanh activation between the weight layers")
        return cls(tuple(layers), activation, tuple(recipe), 0.01 if slope is None else slope)


def _natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key of a module path with numeric parts as numbers: ``"2" < "10"``, ``"fc2" < "fc10"``."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name) if part)


class WeightSpace:
    """A batch of networks (or of equivariant features of them) in weight space.

    Args:
        weights: ``L`` tensors ``(B, C, n_{l+1}, n_l[, kh, kw])``.
        biases: ``L`` tensors ``(B, C, n_{l+1})``.
        spec: the architecture; its activation fixes the symmetry group.
    """

    def __init__(self, weights: Sequence[Tensor], biases: Sequence[Tensor], spec: WeightSpaceSpec) -> None:
        weights, biases = tuple(weights), tuple(biases)
        if len(weights) != spec.num_layers or len(biases) != spec.num_layers:
            raise ValueError(
                f"expected {spec.num_layers} weights and biases, got {len(weights)} and {len(biases)}"
            )
        lead = weights[0].shape[:2]
        for l, (w, b, layer) in enumerate(zip(weights, biases, spec.layers, strict=True)):
            if tuple(w.shape) != (*lead, *layer.weight_shape):
                raise ValueError(
                    f"weight {l}: expected shape (B, C, {layer.weight_shape}) with (B, C) = "
                    f"{tuple(lead)}, got {tuple(w.shape)}"
                )
            if tuple(b.shape) != (*lead, layer.n_out):
                raise ValueError(f"bias {l}: expected shape {(*lead, layer.n_out)}, got {tuple(b.shape)}")
        self.weights, self.biases, self.spec = weights, biases, spec

    @property
    def batch_size(self) -> int:
        return self.weights[0].shape[0]

    @property
    def channels(self) -> int:
        return self.weights[0].shape[1]

    @property
    def num_layers(self) -> int:
        return self.spec.num_layers

    def __len__(self) -> int:
        return self.batch_size

    def __getitem__(self, index: int | slice | Tensor) -> WeightSpace:
        """Networks ``index`` of the batch (an int keeps a batch dimension of 1).

        Raises:
            IndexError: for an int outside ``[-B, B)``.
        """
        if isinstance(index, int):
            if not -self.batch_size <= index < self.batch_size:
                raise IndexError(f"network index {index} out of range for a batch of {self.batch_size}")
            index %= self.batch_size
            index = slice(index, index + 1)
        return WeightSpace([w[index] for w in self.weights], [b[index] for b in self.biases], self.spec)

    def map(self, fn: Callable[[Tensor], Tensor]) -> WeightSpace:
        """Apply ``fn`` to every weight and bias tensor."""
        return WeightSpace([fn(w) for w in self.weights], [fn(b) for b in self.biases], self.spec)

    def detach(self) -> WeightSpace:
        return self.map(Tensor.detach)

    def to(self, *args: Any, **kwargs: Any) -> WeightSpace:
        """Like :meth:`torch.Tensor.to` on every tensor (device and/or dtype)."""
        return self.map(lambda t: t.to(*args, **kwargs))

    def float(self) -> WeightSpace:
        return self.to(torch.float32)

    def double(self) -> WeightSpace:
        return self.to(torch.float64)

    @property
    def dtype(self) -> torch.dtype:
        return self.weights[0].dtype

    @property
    def device(self) -> torch.device:
        return self.weights[0].device

    def __add__(self, other: WeightSpace) -> WeightSpace:
        return WeightSpace(
            [a + b for a, b in zip(self.weights, other.weights, strict=True)],
            [a + b for a, b in zip(self.biases, other.biases, strict=True)],
            self.spec,
        )

    def __sub__(self, other: WeightSpace) -> WeightSpace:
        return self + other.map(torch.neg)

    def __mul__(self, scalar: float | Tensor) -> WeightSpace:
        return self.map(lambda t: t * scalar)

    def flatten(self) -> Tensor:
        """All entries as ``(B, C, N)`` with ``N`` the number of parameters of one network."""
        parts = [t.flatten(2) for pair in zip(self.weights, self.biases, strict=True) for t in pair]
        return torch.cat(parts, dim=2)

    @staticmethod
    def stack(spaces: Sequence[WeightSpace]) -> WeightSpace:
        """Concatenate batches of networks that share a spec."""
        if not spaces or any(ws.spec != spaces[0].spec for ws in spaces):
            raise ValueError("expected a non-empty list of weight spaces with the same spec")
        L = spaces[0].num_layers
        return WeightSpace(
            [torch.cat([ws.weights[l] for ws in spaces]) for l in range(L)],
            [torch.cat([ws.biases[l] for ws in spaces]) for l in range(L)],
            spaces[0].spec,
        )

    @classmethod
    def from_module(cls, module: nn.Module) -> WeightSpace:
        """The weights of an ``nn.Sequential`` MLP or CNN as a batch of one network with one channel."""
        return cls.from_state_dict(module.state_dict(), module)

    @classmethod
    def from_modules(cls, modules: Sequence[nn.Module]) -> WeightSpace:
        return cls.stack([cls.from_module(m) for m in modules])

    @classmethod
    def from_state_dict(
        cls, state_dict: Mapping[str, Tensor], spec: WeightSpaceSpec | nn.Module
    ) -> WeightSpace:
        """Read the weight and bias of each weight layer of ``spec`` from ``state_dict``, by key.

        Keys are ``<module>.weight`` / ``<module>.bias``. The module names are those of ``spec`` when it is
        an ``nn.Module`` and the positions of :meth:`WeightSpaceSpec.build_module` otherwise; if those keys
        are not all there, the modules are put in order by name with numeric parts compared as numbers
        (``2`` before ``10``, ``net.2`` before ``net.10``). Either way the key order of ``state_dict`` does
        not matter (e.g. the sorted keys of ``safetensors.torch.load_file`` load).

        Raises:
            ValueError: if a module lacks its weight or bias, or the number of modules is not ``L``.
        """
        if isinstance(spec, nn.Module):
            names = [n for n, m in spec.named_children() if isinstance(m, nn.Linear | nn.Conv2d)]
            spec = WeightSpaceSpec.from_module(spec)
        else:
            names = [str(pos) for pos, token in enumerate(spec.recipe) if token[0] == "layer"]
        entries: dict[str, dict[str, Tensor]] = {}
        for key, t in state_dict.items():
            prefix, _, name = key.rpartition(".")
            if name in ("weight", "bias"):
                entries.setdefault(prefix, {})[name] = t
        if len(entries) != spec.num_layers:
            raise ValueError(
                f"expected {2 * spec.num_layers} weight/bias tensors ({spec.num_layers} modules), got "
                f"{sum(len(e) for e in entries.values())} in {len(entries)} modules: {sorted(entries)}"
            )
        if set(names) != set(entries):
            names = sorted(entries, key=_natural_key)
        weights, biases = [], []
        for prefix in names:
            if set(entries[prefix]) != {"weight", "bias"}:
                raise ValueError(f"expected both {prefix}.weight and {prefix}.bias in the state dict")
            weights.append(entries[prefix]["weight"].detach()[None, None])
            biases.append(entries[prefix]["bias"].detach()[None, None])
        return cls(weights, biases, spec)

    @classmethod
    def from_state_dicts(
        cls, state_dicts: Sequence[Mapping[str, Tensor]], spec: WeightSpaceSpec
    ) -> WeightSpace:
        return cls.stack([cls.from_state_dict(sd, spec) for sd in state_dicts])

    def to_state_dict(self, index: int = 0) -> dict[str, Tensor]:
        """State dict of network ``index`` for :meth:`WeightSpaceSpec.build_module` (needs one channel)."""
        if self.channels != 1:
            raise ValueError(
                f"expected a single-channel weight space to build a network, got {self.channels}"
            )
        keys = [f"{pos}" for pos, token in enumerate(self.spec.recipe) if token[0] == "layer"]
        out: dict[str, Tensor] = {}
        for key, w, b in zip(keys, self.weights, self.biases, strict=True):
            out[f"{key}.weight"], out[f"{key}.bias"] = w[index, 0].clone(), b[index, 0].clone()
        return out

    def to_module(self, index: int = 0, train: bool = False) -> nn.Sequential:
        """Network ``index`` as a working ``nn.Sequential``, in eval mode unless ``train=True``.

        Eval mode is the default so that the round trip is exact for networks with ``Dropout`` (a fresh
        module would be in training mode and drop units at random); call ``.train()`` to fine-tune it.
        """
        module = self.spec.build_module().to(self.weights[0].dtype)
        module.load_state_dict(self.to_state_dict(index))
        return module.train(train)

    def to_nfn(self) -> Any:
        """The same tensors as an :class:`nfn.common.WeightSpaceFeatures` (needs the ``nfn`` package).

        This is the one call to make where ``nfn`` expects its features (its layers index and iterate
        over layers, while a :class:`WeightSpace` indexes networks): ``nfn_layer(ws.to_nfn())``, and back
        with ``WeightSpace.from_nfn(out, ws.spec)``.
        """
        from nfn.common import WeightSpaceFeatures

        return WeightSpaceFeatures(self.weights, self.biases)

    @classmethod
    def from_nfn(cls, features: Any, spec: WeightSpaceSpec) -> WeightSpace:
        """Wrap an :class:`nfn.common.WeightSpaceFeatures` with the architecture ``spec``."""
        return cls(features.weights, features.biases, spec)

    @classmethod
    def coerce(cls, features: Any, spec: WeightSpaceSpec) -> WeightSpace:
        """``features`` itself if it is a :class:`WeightSpace`; an ``nfn`` ``WeightSpaceFeatures`` wrapped
        with ``spec``. This is how every ``nfn_ext`` layer and model also takes ``nfn``'s features."""
        if isinstance(features, WeightSpace):
            return features
        if hasattr(features, "weights") and hasattr(features, "biases"):
            return cls.from_nfn(features, spec)
        raise TypeError(f"expected a WeightSpace or nfn WeightSpaceFeatures, got {type(features).__name__}")

    def __repr__(self) -> str:
        return (
            f"WeightSpace(batch={self.batch_size}, channels={self.channels}, dims={self.spec.dims}, "
            f"activation={self.spec.activation!r})"
        )
