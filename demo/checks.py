"""What the tour prints is also checked: a claim that does not hold makes its part fail."""


def expect(holds: bool, claim: str) -> None:
    """Raise ``RuntimeError`` naming ``claim`` unless it ``holds``."""
    if not holds:
        raise RuntimeError(f"demo claim does not hold: {claim}")
