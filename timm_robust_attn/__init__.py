"""timm_robust_attn: public API (filled in by its issue)."""

__all__: list[str] = []
