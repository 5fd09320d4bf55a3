"""Patch a transformers Mamba model in place with the two refinements, and undo or reload the patch.

Where the patch acts (both the PyTorch path and the mamba-ssm kernel path of ``MambaMixer.forward``):

- ``stable``: a ``torch.nn.utils.parametrize`` parametrisation of ``mixer.x_proj.weight``. Every path reads
  that attribute (the fused ``mamba_inner_fn`` receives ``self.x_proj.weight``; the unfused path calls
  ``self.x_proj``), so the constraint holds on all of them by construction.
- ``reorder``: a forward pre-hook on ``mixer.x_proj``, whose input is the x branch after conv + SiLU +
  padding mask; it overwrites that tensor in place with ``P @ x``, so both the projections (dt, B, C) and
  the selective scan see the reordered tokens. The fused training kernel never calls ``x_proj``; a pre/post
  hook pair on the mixer clears ``mixer.training`` during its forward, which is the only thing that selects
  that kernel, so a reordering mixer takes the unfused path (still the mamba-ssm scan and causal-conv1d
  kernels on CUDA).

Checkpoints stay standard Mamba checkpoints: a state-dict hook on each constrained ``x_proj`` writes the
materialised ``x_proj.weight`` (not the parametrisation's free tensor), and a load hook maps it back with the
exact inverse, so ``save_pretrained`` output loads into plain transformers with the same function.
"""

import copy
import gc
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from transformers import AutoConfig, FalconMambaConfig, Mamba2Config, MambaForCausalLM, MambaModel
from transformers.generation import GenerationMixin
from transformers.models.mamba.modeling_mamba import MambaMixer

from .classification import MambaForSequenceClassification
from .reorder import ImportanceReorder
from .stable import SignDefiniteProjection

CONFIG_KEY = "mamba_refine"
STABLE_INITS = ("reference", "project")
_HANDLES = "_mamba_refine_handles"
_GENERATORS = "_mamba_refine_generators"
_FREE = "parametrizations.weight.original"
_ARCHITECTURES = {
    cls.__name__: cls for cls in (MambaModel, MambaForCausalLM, MambaForSequenceClassification)
}


def find_mixers(model: nn.Module) -> list[MambaMixer]:
    """The ``MambaMixer`` modules of ``model`` in layer order; refuses other families and models."""
    config = getattr(model, "config", None)
    for other, name in ((FalconMambaConfig, "FalconMamba"), (Mamba2Config, "Mamba2")):
        if isinstance(config, other):
            raise ValueError(
                f"{name} models are not supported by hf_mamba_refine (their mixers differ from MambaMixer); "
                "expected a model built from a MambaConfig"
            )
    mixers = [module for module in model.modules() if isinstance(module, MambaMixer)]
    if not mixers:
        raise ValueError(f"expected a model containing transformers' MambaMixer, got {type(model).__name__}")
    return sorted(mixers, key=lambda mixer: mixer.layer_idx)


def is_patched(model: nn.Module) -> bool:
    """Whether :func:`patch` has been applied to ``model`` (and not undone)."""
    return hasattr(model, _HANDLES)


def _select(mixers: list[MambaMixer], layers: Sequence[int] | None, what: str) -> list[MambaMixer]:
    if layers is None:
        return mixers
    by_index = {mixer.layer_idx: mixer for mixer in mixers}
    unknown = sorted(set(layers) - set(by_index))
    if unknown:
        raise ValueError(f"{what} must be layer indices in {sorted(by_index)}, got unknown {unknown}")
    return [by_index[index] for index in sorted(set(layers))]


def _reorder_hooks(mixer: MambaMixer) -> list[torch.utils.hooks.RemovableHandle]:
    """Hooks that reorder the x branch of ``mixer`` (see the module docstring)."""

    def reorder_x(x_proj: nn.Linear, args: tuple[torch.Tensor]) -> None:
        (x,) = args
        if x.shape[1] > 1:
            reordered = mixer.token_reorder(x.clone(), x_proj.weight[: mixer.time_step_rank])
            x.copy_(reordered)

    def enter(module: MambaMixer, args: tuple, kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask")
        if mask is not None and not bool(mask.all()):
            raise ValueError("token reordering expects unpadded batches (attention_mask all ones)")
        module._mamba_refine_training = module.training
        module.training = False

    def leave(module: MambaMixer, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        module.training = module.__dict__.pop("_mamba_refine_training", module.training)

    return [
        mixer.x_proj.register_forward_pre_hook(reorder_x),
        mixer.register_forward_pre_hook(enter, with_kwargs=True),
        mixer.register_forward_hook(leave, with_kwargs=True, always_call=True),
    ]


def _standard_checkpoint_hooks(x_proj: nn.Linear) -> list[torch.utils.hooks.RemovableHandle]:
    """State-dict hooks: save ``x_proj.weight`` materialised, load it back through ``right_inverse``."""

    def save(module: nn.Linear, state_dict: dict, prefix: str, local_metadata: dict) -> None:
        if prefix + _FREE in state_dict:
            del state_dict[prefix + _FREE]
            state_dict[prefix + "weight"] = module.weight.detach()

    def load(module: nn.Linear, state_dict: dict, prefix: str, *args: Any) -> None:
        if prefix + "weight" in state_dict and prefix + _FREE not in state_dict:
            free = module.parametrizations.weight.original
            weight = state_dict.pop(prefix + "weight").to(free.device, free.dtype)
            state_dict[prefix + _FREE] = module.parametrizations.weight[0].right_inverse(weight)

    return [x_proj.register_state_dict_post_hook(save), x_proj.register_load_state_dict_pre_hook(load)]


def _generative_owners(module: nn.Module) -> list[nn.Module]:
    """The generative modules (``GenerationMixin``) whose module tree contains ``module``.

    Modules keep no link to their parent, so the tree is walked upwards through the garbage collector's
    referrers: a child is held by its parent's ``_modules`` dict, which is held by the parent's ``__dict__``.
    Only called for ``reorder=True`` (it scans the heap: about 0.1 to 0.5 s).
    """

    def parents(child: nn.Module) -> list[nn.Module]:
        holders = {id(ref): ref for ref in gc.get_referrers(child) if isinstance(ref, dict)}
        if not holders:
            return []
        attributes = {
            id(ref): ref for ref in gc.get_referrers(*holders.values())
            if isinstance(ref, dict) and id(ref.get("_modules")) in holders
        }
        if not attributes:
            return []
        return [
            ref for ref in gc.get_referrers(*attributes.values())
            if isinstance(ref, nn.Module) and id(ref.__dict__) in attributes
        ]

    owners, seen, frontier = [], {id(module)}, [module]
    while frontier:
        for parent in parents(frontier.pop()):
            if id(parent) not in seen:
                seen.add(id(parent))
                frontier.append(parent)
                if isinstance(parent, GenerationMixin):
                    owners.append(parent)
    return owners


def _refuse_generate(*args: Any, **kwargs: Any) -> None:
    raise ValueError(
        "generate() is disabled: this model reorders tokens inside its mixers (hf_mamba_refine "
        "reorder=True), which mixes future tokens into past positions; unpatch(model) first"
    )


def patch(
    model: nn.Module,
    stable: bool = True,
    reorder: bool = False,
    *,
    regime: str = "divergent",
    d_min: float = 0.7,
    stable_layers: Sequence[int] | None = None,
    reorder_layers: Sequence[int] | None = (0,),
    tau: float = 1.0,
    hard: bool = False,
    allow_causal_reorder: bool = False,
    stable_init: str = "reference",
) -> nn.Module:
    """Apply the refinements to every (or the chosen) ``MambaMixer`` of ``model`` in place and return it.

    Args:
        model: ``MambaModel``, ``MambaForCausalLM``, ``MambaForSequenceClassification`` or any module whose
            layers contain ``MambaMixer`` (a ``config`` attribute is needed to persist the options). The
            config is copied before the options are recorded on it (transformers shares one config object
            between a model, its submodules and models built from the same config), and the copy replaces
            the old one in every submodule of ``model`` that held it.
        stable: constrain ``S_C^T S_B`` to be sign-definite (:class:`SignDefiniteProjection`).
        reorder: add an :class:`ImportanceReorder` to the chosen mixers. Not causal: refused for generative
            models, and for modules inside one (``lm.backbone``), unless ``allow_causal_reorder=True``;
            ``generate()`` of those models then raises.
        regime: ``"divergent"`` (PSD, the refinement) or ``"convergent"`` (NSD, the ablation).
        d_min: floor of the diagonal scale of the parametrisation.
        stable_layers: layer indices to constrain (``None``: all).
        reorder_layers: layer indices to reorder; by default layer 0 only (the reference reorders one block
            per stage; reordering every layer cost 16 points of accuracy in our runs); ``None``: all.
        tau / hard: SoftSort temperature and straight-through option.
        allow_causal_reorder: accept ``reorder=True`` on a generative model (e.g. for bidirectional scoring).
        stable_init: how the free tensor of ``stable`` starts. ``"reference"`` (training from scratch, as the
            reference code): the current weight itself, so ``S_C = triu_1(W_C) + I`` and
            ``d = softplus(diag W_B) + d_min`` (about ``1.39`` for transformers' initialisation), where ``d``
            learns. ``"project"``: the Frobenius-closest constrained weight, exact on a weight that already
            satisfies the constraint (a reloaded checkpoint, or a model after :func:`project_stable`). On
            small random weights the closest point has every ``d`` at ``d_min``, where softplus has a
            vanishing gradient, so do not use it to start training.
    """
    mixers = find_mixers(model)
    if is_patched(model) or any(
        parametrize.is_parametrized(m.x_proj, "weight") or hasattr(m, "token_reorder") for m in mixers
    ):
        raise ValueError("model is already patched by hf_mamba_refine; call unpatch(model) first")
    generators = []
    if reorder:
        generators = [model] if isinstance(model, GenerationMixin) else []
        generators += _generative_owners(model)
    if generators and not allow_causal_reorder:
        owner = "" if generators[0] is model else f" (it is part of a {type(generators[0]).__name__})"
        raise ValueError(
            f"reorder=True breaks causality and {type(model).__name__} is generative{owner}; use it for "
            "encoders (e.g. MambaForSequenceClassification) or pass allow_causal_reorder=True to accept that"
        )
    if stable_init not in STABLE_INITS:
        raise ValueError(f"stable_init must be one of {STABLE_INITS}, got {stable_init!r}")
    constrained = _select(mixers, stable_layers, "stable_layers") if stable else []
    reordered = _select(mixers, reorder_layers, "reorder_layers") if reorder else []
    for mixer in constrained:
        if mixer.intermediate_size < mixer.ssm_state_size:
            raise ValueError(
                f"stable=True needs intermediate_size >= state_size, got {mixer.intermediate_size} < "
                f"{mixer.ssm_state_size} in layer {mixer.layer_idx}"
            )
    handles: list[torch.utils.hooks.RemovableHandle] = []
    for mixer in constrained:
        projection = SignDefiniteProjection(mixer.time_step_rank, mixer.ssm_state_size, regime, d_min)
        current = mixer.x_proj.weight.detach().clone()
        parametrize.register_parametrization(mixer.x_proj, "weight", projection)
        if stable_init == "reference":
            with torch.no_grad():
                mixer.x_proj.parametrizations.weight.original.copy_(current)
        handles += _standard_checkpoint_hooks(mixer.x_proj)
    for mixer in reordered:
        mixer.token_reorder = ImportanceReorder(mixer.time_step_rank, tau, hard).to(mixer.x_proj.weight)
        handles += _reorder_hooks(mixer)
    for generator in generators:
        generator.generate = _refuse_generate
    setattr(model, _HANDLES, handles)
    setattr(model, _GENERATORS, generators)
    options = {
        "stable": stable,
        "reorder": reorder,
        "regime": regime,
        "d_min": d_min,
        "stable_layers": None if stable_layers is None else sorted(set(stable_layers)),
        "reorder_layers": None if reorder_layers is None else sorted(set(reorder_layers)),
        "tau": tau,
        "hard": hard,
        "allow_causal_reorder": allow_causal_reorder,
    }
    config = getattr(model, "config", None)
    if config is not None:
        private = copy.deepcopy(config)
        for module in model.modules():
            if getattr(module, "config", None) is config:
                module.config = private
        setattr(private, CONFIG_KEY, options)
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Remove the patch in place; constrained weights are kept as plain weights, the scorers are dropped."""
    if not is_patched(model):
        raise ValueError("model is not patched by hf_mamba_refine")
    for handle in getattr(model, _HANDLES):
        handle.remove()
    delattr(model, _HANDLES)
    for mixer in find_mixers(model):
        if parametrize.is_parametrized(mixer.x_proj, "weight"):
            parametrize.remove_parametrizations(mixer.x_proj, "weight", leave_parametrized=True)
        if hasattr(mixer, "token_reorder"):
            del mixer.token_reorder
    for generator in model.__dict__.pop(_GENERATORS, []):
        generator.__dict__.pop("generate", None)
    if getattr(model, "config", None) is not None and hasattr(model.config, CONFIG_KEY):
        delattr(model.config, CONFIG_KEY)
    return model


@dataclass
class ProjectionReport:
    """How far :func:`project_stable` moved each layer: ``||W' - W||_F / ||W_{B,C}||_F`` (B and C rows)."""

    layers: list[int] = field(default_factory=list)
    relative_change: list[float] = field(default_factory=list)

    def __str__(self) -> str:
        pairs = zip(self.layers, self.relative_change, strict=True)
        rows = [f"| {layer} | {change:.4f} |" for layer, change in pairs]
        return "\n".join(["| layer | relative change of [S_B; S_C] |", "|---|---|", *rows])


@torch.no_grad()
def project_stable(model: nn.Module, regime: str = "divergent", d_min: float = 0.7) -> ProjectionReport:
    """Move every mixer's ``x_proj.weight`` to the Frobenius-closest weight of the constraint set, in place.

    For pretrained models: afterwards ``patch(model, stable=True, stable_init="project")`` with the same
    ``regime``/``d_min`` leaves the outputs unchanged (rows whose closest ``d`` is ``d_min`` then keep it:
    softplus has no gradient there). Refuses a model whose weights are already parametrised.
    """
    report = ProjectionReport()
    for mixer in find_mixers(model):
        if parametrize.is_parametrized(mixer.x_proj, "weight"):
            raise ValueError(f"layer {mixer.layer_idx} is already constrained by patch(stable=True)")
        projection = SignDefiniteProjection(mixer.time_step_rank, mixer.ssm_state_size, regime, d_min)
        weight = mixer.x_proj.weight
        projected = projection(projection.right_inverse(weight))
        block = weight[mixer.time_step_rank :]
        report.layers.append(mixer.layer_idx)
        report.relative_change.append(float((projected - weight).norm() / block.norm().clamp_min(1e-12)))
        weight.copy_(projected)
    return report


def _read_tensors(path: Path, keys: Sequence[str]) -> dict[str, torch.Tensor]:
    """The named tensors of a local ``save_pretrained`` folder (single file or shards with an index)."""
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = {key: path / weight_map[key] for key in keys}
    else:
        files = dict.fromkeys(keys, path / "model.safetensors")
    tensors = {}
    for key, file in files.items():
        with safe_open(file, framework="pt") as handle:
            tensors[key] = handle.get_tensor(key)
    return tensors


def from_pretrained(path: str | Path, **kwargs: Any) -> nn.Module:
    """Load a model saved with ``save_pretrained`` from a local folder, re-applying a stored patch.

    The class comes from ``config.architectures`` (``MambaModel``, ``MambaForCausalLM`` or
    ``MambaForSequenceClassification``); ``config.mamba_refine`` holds the :func:`patch` options. The weights
    are loaded by transformers' own ``from_pretrained`` (so ``dtype`` / ``torch_dtype``, ``device_map``,
    sharded checkpoints and config overrides such as ``num_labels`` behave as there; every keyword is passed
    on), then the patch is re-applied with ``stable_init="project"``, which keeps the stored constrained
    weights, and the reordering scorers (the only tensors a plain Mamba lacks) are read from the folder.
    Checkpoints of earlier versions (free tensors under ``x_proj.parametrizations.weight.original``) load too.
    """
    path = Path(path)
    config = kwargs.get("config") or AutoConfig.from_pretrained(path)
    names = getattr(config, "architectures", None) or ["MambaModel"]
    if names[0] not in _ARCHITECTURES:
        raise ValueError(f"expected one of {sorted(_ARCHITECTURES)} in config.architectures, got {names}")
    model, info = _ARCHITECTURES[names[0]].from_pretrained(path, output_loading_info=True, **kwargs)
    options = getattr(model.config, CONFIG_KEY, None)
    extra = list(info["unexpected_keys"])
    if options:
        patch(model, **options, stable_init="project")
        if extra:
            loaded = model.load_state_dict(_read_tensors(path, extra), strict=False)
            extra = list(loaded.unexpected_keys)
    missing = {key.removesuffix(".weight") for key in info["missing_keys"]}
    old_format = {key.removesuffix("." + _FREE) for key in info["unexpected_keys"] if key.endswith(_FREE)}
    if extra or (options and missing - old_format) or (not options and missing):
        raise ValueError(
            f"checkpoint in {path} does not match {names[0]} patched with {options}: missing "
            f"{sorted(info['missing_keys'])}, unexpected {sorted(extra)}"
        )
    return model.eval()
