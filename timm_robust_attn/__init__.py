"""timm_robust_attn: KDE, robust-KDE (KIRWLS), SPKDE and median-of-means attention for timm.

Importing the package registers ``"kde"``, ``"rkde"``, ``"spkde"`` and ``"mom"`` in timm's
``vision_transformer.ATTN_LAYERS`` and lets ``VisionTransformer`` (so ``timm.create_model``) take
``attn=<name>, attn_kwargs={...}``; see :func:`timm_robust_attn.registry.register`.
Registration is idempotent.
"""

from .attention import KDEAttention, MoMAttention, RKDEAttention, SPKDEAttention
from .blocks import RobustParallelScalingBlock
from .functional import kirwls_weights, project_simplex, spkde_weights
from .registry import ROBUST_ATTN_LAYERS, attention_class, convert_attention, register

register()

__all__ = [
    "KDEAttention",
    "MoMAttention",
    "RKDEAttention",
    "ROBUST_ATTN_LAYERS",
    "RobustParallelScalingBlock",
    "SPKDEAttention",
    "attention_class",
    "convert_attention",
    "kirwls_weights",
    "project_simplex",
    "register",
    "spkde_weights",
]
