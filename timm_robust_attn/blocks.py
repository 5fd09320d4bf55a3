"""Robust attention inside timm's ``ParallelScalingBlock`` (``vit_*_xp_*``, ``vit_pwee_*``).

timm's ``ParallelScalingBlock`` (ViT-22B's parallel attention + MLP) computes attention inline from one
fused input projection and ignores ``attn_layer``, so a robust attention cannot be handed to it as a class.
The block below keeps every parameter of timm's block (same names, same state dict) and replaces only the
attention core by the estimator of a robust attention class.
"""

from typing import Any

import torch
from timm.layers import LayerNorm
from timm.models import vision_transformer
from timm.models.vision_transformer import ParallelScalingBlock
from torch import Tensor, nn

from .attention import KDEAttention
from .functional import unit_norm

torch.fx.wrap("unit_norm")  # a leaf for torch.fx, as in attention.py

__all__ = ["RobustParallelScalingBlock", "attention_estimator"]

_OWNED_BY_BLOCK = ("qkv", "q_norm", "k_norm", "norm", "proj")


def attention_estimator(
        attn_layer: str | type[nn.Module], dim: int, num_heads: int, attn_drop: nn.Dropout, **options: Any,
) -> KDEAttention:
    """The estimator of a robust attention alone: an ``attn_layer`` instance without parameters.

    Its projections and norms (``qkv``, ``q_norm``, ``k_norm``, ``norm``, ``proj``) are identities because the
    host block owns them; what remains is the estimator's options (bandwidth, loss, ...), ``attn_drop``,
    ``fused_attn`` and :meth:`~timm_robust_attn.KDEAttention.attend`. ``attn_drop`` is the host block's own
    dropout module, shared, so that hooks on ``<block>.attn_drop`` (timm's ``AttentionExtract``) see the map.

    Args:
        attn_layer: A robust attention class (``KDEAttention`` or a subclass, e.g. from
            :func:`~timm_robust_attn.attention_class`) or its registered name (``"kde"``, ``"rkde"``, ...).
        dim: Model width; ``dim // num_heads`` is the head width.
        num_heads: Number of heads.
        attn_drop: The host block's attention dropout.
        **options: Options of ``attn_layer`` (``bandwidth``, ``loss``, ...).

    Raises:
        ValueError: If ``attn_layer`` is not a robust attention.
    """
    layer = vision_transformer.ATTN_LAYERS.get(attn_layer) if isinstance(attn_layer, str) else attn_layer
    if not (isinstance(layer, type) and issubclass(layer, KDEAttention)):
        raise ValueError(
            f"RobustParallelScalingBlock needs a robust attention ('kde', 'rkde', 'spkde', 'mom' or a class "
            f"from timm_robust_attn.attention_class), got {attn_layer!r}; for softmax attention use timm's "
            "ParallelScalingBlock")
    estimator = layer(dim, num_heads=num_heads, attn_drop=attn_drop.p, device="meta", **options)
    for name in _OWNED_BY_BLOCK:
        setattr(estimator, name, nn.Identity())
    estimator.attn_drop = attn_drop
    return estimator


class RobustParallelScalingBlock(ParallelScalingBlock):
    r"""timm's ``ParallelScalingBlock`` with a robust attention core.

    .. math::
        x \leftarrow x + \operatorname{LS}\big(W_a\, \operatorname{attend}(q, \hat k, v) + W_m\,
        \operatorname{act}(u)\big), \qquad [u; q; k; v] = W_{in}\, \operatorname{norm}(x)

    where ``attend`` is the robust estimator (:meth:`~timm_robust_attn.KDEAttention.attend`) on queries and
    L2-normalised keys after timm's ``q_norm`` / ``k_norm``. Parameters, their names and the state dict are
    those of ``ParallelScalingBlock``: a timm checkpoint loads unchanged. ``attn`` holds the parameter-free
    estimator (:func:`attention_estimator`), so its options read as ``block.attn.loss`` etc.

    Args:
        dim ... dtype: As ``timm.models.vision_transformer.ParallelScalingBlock``.
        attn_layer: The robust attention (class or registered name); required, unlike timm's block, which
            ignores it.

    Shapes:
        - **input:** ``x [B, N, dim]``, ``attn_mask`` bool (True = attend) or additive, broadcastable to
          ``[B, num_heads, N, N]``
        - **output:** ``[B, N, dim]``
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            mlp_ratio: float = 4.0,
            qkv_bias: bool = False,
            qk_norm: bool = False,
            scale_attn_norm: bool = False,
            scale_mlp_norm: bool = False,
            proj_bias: bool = True,
            proj_drop: float = 0.0,
            attn_drop: float = 0.0,
            init_values: float | None = None,
            drop_path: float = 0.0,
            act_layer: type[nn.Module] = nn.GELU,
            norm_layer: type[nn.Module] = LayerNorm,
            mlp_layer: type[nn.Module] | None = None,
            attn_layer: str | type[nn.Module] | None = None,
            depth: int = 0,
            fuse_out_proj: bool = False,
            device: torch.device | str | None = None,
            dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_norm=qk_norm,
            scale_attn_norm=scale_attn_norm, scale_mlp_norm=scale_mlp_norm, proj_bias=proj_bias,
            proj_drop=proj_drop, attn_drop=attn_drop, init_values=init_values, drop_path=drop_path,
            act_layer=act_layer, norm_layer=norm_layer, mlp_layer=mlp_layer, depth=depth,
            fuse_out_proj=fuse_out_proj, device=device, dtype=dtype)
        self.attn = attention_estimator(attn_layer, dim, num_heads, self.attn_drop)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        B, N, C = x.shape
        y = self.in_proj(self.in_norm(x))
        x_mlp, q, k, v = torch.split(y, self.in_split, dim=-1)
        if self.mlp_bias is not None:
            x_mlp = x_mlp + self.mlp_bias
        q = self.q_norm(q.view(B, N, self.num_heads, self.head_dim)).transpose(1, 2)
        k = unit_norm(self.k_norm(k.view(B, N, self.num_heads, self.head_dim))).transpose(1, 2)
        v = v.view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        x_attn = self.attn.attend(q, k, v, attn_mask, is_causal).transpose(1, 2).reshape(B, N, C)
        x_mlp = self.mlp_drop(self.mlp_act(x_mlp))
        if self.out_proj is not None:
            y = self.out_proj(torch.cat((x_attn, x_mlp), dim=-1))
        else:
            y = self.attn_out_proj(x_attn) + self.mlp_out_proj(x_mlp)
        return x + self.drop_path(self.ls(y))

