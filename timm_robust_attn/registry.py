"""Registration in timm and in-place conversion of built models.

``register()`` (run on ``import timm_robust_attn``; idempotent) does two things:

1. adds ``"kde"``, ``"rkde"``, ``"spkde"`` and ``"mom"`` to ``timm.models.vision_transformer.ATTN_LAYERS``, so
   ``timm.create_model("vit_tiny_patch16_224", attn_layer="rkde")`` (or ``attn_layer=attention_class(...)``)
   works for every ``VisionTransformer`` whose blocks build their attention from ``attn_layer`` (``Block``,
   ``ResPostBlock``, ``ParallelThingsBlock``: ``vit_*``, ``deit_*``) without anything else;
2. wraps ``VisionTransformer.__init__`` once, for what ``attn_layer`` alone cannot do:

   - ``ParallelScalingBlock`` (``vit_*_xp_*``, ``vit_pwee_*``) computes attention inline and ignores
     ``attn_layer``; only the model's constructor sees both ``attn_layer`` and ``block_fn``, so a robust
     ``attn_layer`` there selects :class:`~timm_robust_attn.RobustParallelScalingBlock` (same parameters);
   - a block that would still drop a robust ``attn_layer`` (``DiffParallelScalingBlock``, custom blocks)
     raises ``ValueError`` after construction instead of silently building softmax attention;
   - ``attn=<name>, attn_kwargs={...}`` carry options as plain data (configs, ``train.py --model-kwargs``),
     turned into ``attn_layer=attention_class(name, **attn_kwargs)``.
"""

from __future__ import annotations

import copyreg
import functools
import inspect
from typing import Any

from timm.layers import Attention
from timm.models import vision_transformer
from timm.models.vision_transformer import ParallelScalingBlock
from torch import nn

from .attention import KDEAttention, MoMAttention, RKDEAttention, SPKDEAttention
from .blocks import RobustParallelScalingBlock, attention_estimator

__all__ = ["ROBUST_ATTN_LAYERS", "attention_class", "convert_attention", "register"]

ROBUST_ATTN_LAYERS: dict[str, type[Attention]] = {
    "kde": KDEAttention,
    "rkde": RKDEAttention,
    "spkde": SPKDEAttention,
    "mom": MoMAttention,
}
SOFTMAX_NAMES = ("attn", "softmax")
UNSUPPORTED_FAMILIES = "eva, beit, swin, cait, xcit, levit, twins, pvt_v2, mvitv2, efficientformer, vitamin"


def _freeze(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


class _BoundAttentionType(type):
    """Metaclass of option-bound attention classes: they pickle as ``attention_class(name, **options)``."""

    _bound: tuple[str, tuple[tuple[str, Any], ...]]


def _reduce_bound_class(cls: _BoundAttentionType) -> tuple:
    return _bound_class, cls._bound


copyreg.pickle(_BoundAttentionType, _reduce_bound_class)


@functools.cache
def _bound_class(name: str, options: tuple[tuple[str, Any], ...]) -> type[Attention]:
    """The ``ROBUST_ATTN_LAYERS[name]`` subclass with ``options`` as constructor defaults (one per key)."""
    base = ROBUST_ATTN_LAYERS[name]
    defaults = dict(options)

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: N807
        base.__init__(self, *args, **{**defaults, **kwargs})

    doc = f"{base.__name__} with defaults {defaults}.\n\n{base.__doc__}"
    namespace = {"__init__": __init__, "__doc__": doc, "__module__": base.__module__,
                 "__qualname__": f"{base.__name__}[{name}]", "_bound": (name, options)}
    return _BoundAttentionType(base.__name__, (base,), namespace)


def attention_class(name: str, **options: Any) -> type[Attention]:
    """The attention class for ``name`` (``"kde"``, ``"rkde"``, ``"spkde"``, ``"mom"``, or ``"attn"`` for
    timm's softmax ``Attention``), with ``options`` bound as constructor defaults.

    The same ``(name, options)`` returns the same class. Options are validated now, on a 1-head probe.
    """
    if name in SOFTMAX_NAMES:
        if options:
            raise ValueError(f"timm's softmax Attention takes no robust options, got {sorted(options)}")
        return Attention
    if name not in ROBUST_ATTN_LAYERS:
        allowed = sorted(ROBUST_ATTN_LAYERS) + list(SOFTMAX_NAMES)
        raise ValueError(f"unknown attention {name!r}; expected one of {allowed}")
    if not options:
        return ROBUST_ATTN_LAYERS[name]
    try:
        ROBUST_ATTN_LAYERS[name](8, num_heads=1, device="meta", **options)
    except TypeError as err:
        raise ValueError(f"bad option for {name!r} attention: {err}") from err
    return _bound_class(name, tuple(sorted((k, _freeze(v)) for k, v in options.items())))


def _robust_layer(layer: Any) -> type[KDEAttention] | None:
    """The robust attention class that an ``attn_layer`` value names, or None (softmax, other timm layers)."""
    if isinstance(layer, str):
        layer = vision_transformer.ATTN_LAYERS.get(layer)
    return layer if isinstance(layer, type) and issubclass(layer, KDEAttention) else None


def _vit_init_with_attn(init):
    """Wrap ``VisionTransformer.__init__``: ``attn=`` / ``attn_kwargs=``, and robust ``attn_layer`` values
    reaching blocks that would ignore them (see the module docstring)."""

    @functools.wraps(init)
    def __init__(self, *args: Any, attn: str | None = None, attn_kwargs: dict[str, Any] | None = None,
                 **kwargs: Any) -> None:
        if attn is not None or attn_kwargs:
            layer = kwargs.get("attn_layer")
            name = attn if attn is not None else layer if isinstance(layer, str) else None
            if name is None:
                raise ValueError("attn_kwargs needs attn=<name> or attn_layer=<name> naming one of "
                                 f"{sorted(ROBUST_ATTN_LAYERS)}")
            kwargs["attn_layer"] = attention_class(name, **(attn_kwargs or {}))
        robust = _robust_layer(kwargs.get("attn_layer"))
        if robust is not None and kwargs.get("block_fn") is ParallelScalingBlock:
            kwargs["block_fn"] = RobustParallelScalingBlock
        init(self, *args, **kwargs)
        if robust is not None and not any(isinstance(m, KDEAttention) for m in self.blocks.modules()):
            block_fn = kwargs.get("block_fn")
            raise ValueError(
                f"block_fn={getattr(block_fn, '__name__', block_fn)} ignores attn_layer, so "
                f"{robust.__name__} would be silently dropped; robust attention supports VisionTransformer "
                "models built on Block, ResPostBlock, ParallelThingsBlock and ParallelScalingBlock")

    __init__.__timm_robust_attn__ = True
    return __init__


def register() -> None:
    """Register the robust attentions in timm (idempotent); see the module docstring."""
    vision_transformer.ATTN_LAYERS.update(ROBUST_ATTN_LAYERS)
    cls = vision_transformer.VisionTransformer
    if not getattr(cls.__init__, "__timm_robust_attn__", False):
        cls.__init__ = _vit_init_with_attn(cls.__init__)


_HOOKS = (
    "_backward_pre_hooks", "_backward_hooks", "_is_full_backward_hook", "_forward_hooks",
    "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs", "_state_dict_hooks", "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
)


def _convertible(module: nn.Module) -> bool:
    return type(module) is Attention or isinstance(module, KDEAttention)


def _carried_options(source: nn.Module | None, name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Options of the target attention ``name`` that ``source`` (a robust attention) has too, unless given."""
    if name in SOFTMAX_NAMES or not isinstance(source, KDEAttention):
        return {}
    parameters = inspect.signature(ROBUST_ATTN_LAYERS[name].__init__).parameters.values()
    keys = [p.name for p in parameters if p.kind is p.KEYWORD_ONLY and p.name not in options]
    return {key: getattr(source, key) for key in keys if hasattr(source, key)}


def _rebuild(module: Attention, cls: type[Attention], carried: dict[str, Any]) -> Attention:
    """A ``cls`` instance that shares every submodule (so every parameter) and every hook of ``module``."""
    norm = module.q_norm if not isinstance(module.q_norm, nn.Identity) else module.norm
    new = cls(
        module.qkv.in_features,
        num_heads=module.num_heads,
        attn_head_dim=module.head_dim,
        dim_out=module.proj.out_features,
        qkv_bias=module.qkv.bias is not None,
        qk_norm=not isinstance(module.q_norm, nn.Identity),
        scale_norm=not isinstance(module.norm, nn.Identity),
        proj_bias=module.proj.bias is not None,
        attn_drop=module.attn_drop.p,
        proj_drop=module.proj_drop.p,
        norm_layer=type(norm) if not isinstance(norm, nn.Identity) else None,
        device="meta",
        **({"gated": True} if getattr(module, "gate", None) is not None else {}),
        **carried,
    )
    for child_name, child in module.named_children():
        setattr(new, child_name, child)
    for hooks in _HOOKS:
        setattr(new, hooks, getattr(module, hooks))
    new.fused_attn = module.fused_attn
    new.train(module.training)
    return new


def _convert_block(
        block: ParallelScalingBlock, cls: type[Attention], name: str, options: dict[str, Any]) -> None:
    """Switch a ``ParallelScalingBlock`` to or between robust estimators in place (parameters, hooks kept)."""
    if name in SOFTMAX_NAMES:
        if isinstance(block, RobustParallelScalingBlock):
            del block.attn
            block.__class__ = ParallelScalingBlock
        return
    carried = _carried_options(getattr(block, "attn", None), name, options)
    estimator = attention_estimator(cls, block.num_heads * block.head_dim, block.num_heads, block.attn_drop,
                                    **carried)
    estimator.fused_attn = block.fused_attn
    estimator.train(block.training)
    block.__class__ = RobustParallelScalingBlock
    block.attn = estimator


def convert_attention(model: nn.Module, name: str, **options: Any) -> nn.Module:
    """Swap, in place, every timm ``Attention`` (or robust attention) of ``model`` for ``name``, keeping
    the weights and the hooks registered on the attention modules.

    ``name="attn"`` (or ``"softmax"``) restores timm's ``Attention``. Parameters are shared, not copied, so
    optimiser state and tied weights survive. Options of the target that a robust source also has (e.g. a
    KDE ``bandwidth`` into RKDE, RKDE's ``loss`` into RKDE with more ``iterations``) are carried unless given.
    ``ParallelScalingBlock`` blocks (``vit_*_xp_*``) become :class:`RobustParallelScalingBlock` and back.

    Args:
        model: A built timm model whose self-attention is ``timm.layers.Attention`` (``vit_*``, ``deit_*``)
            or timm's ``ParallelScalingBlock``.
        name: ``"kde"``, ``"rkde"``, ``"spkde"``, ``"mom"``, ``"attn"`` or ``"softmax"``.
        **options: Options of the target class (e.g. ``loss="hampel", iterations=2``).

    Returns:
        ``model`` itself.

    Raises:
        ValueError: On an unknown name or option, or a model with no convertible attention (families with
            their own attention classes: eva, beit, swin, ...).
    """
    cls = attention_class(name, **options)
    blocks = {n: m for n, m in model.named_modules()
              if type(m) in (ParallelScalingBlock, RobustParallelScalingBlock)}
    estimators = {f"{n}.attn" for n in blocks}
    targets = [(n, m) for n, m in model.named_modules() if n and n not in estimators and _convertible(m)]
    if not targets and not blocks:
        own = sorted({type(m).__name__ for m in model.modules() if "Attention" in type(m).__name__})
        raise ValueError(
            f"{type(model).__name__} has no timm.layers.Attention to convert (found {own or 'none'}); "
            "convert_attention supports models built on VisionTransformer (vit_*, deit_*, ...). Families "
            f"with their own attention classes ({UNSUPPORTED_FAMILIES}) are not supported.")
    for module_name, module in targets:
        parent_name, _, child_name = module_name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child_name, _rebuild(module, cls, _carried_options(module, name, options)))
    for block in blocks.values():
        _convert_block(block, cls, name, options)
    return model
