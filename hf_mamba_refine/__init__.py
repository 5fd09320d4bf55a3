"""hf_mamba_refine: public API (filled in by its issue)."""

__all__: list[str] = []
