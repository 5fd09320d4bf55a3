"""pyg_clifford: public API (filled in by its issue)."""

__all__: list[str] = []
