"""hf_mamba_refine: diagnose the token dynamics of Hugging Face Mamba models and patch in two refinements.

Based on "Demystifying the Token Dynamics of Deep Selective State Space Models" (Vo et al., ICLR 2025).
"""

from .analysis import DynamicsReport, LayerDynamics, analyze, classify_spectrum, symmetric_spectrum
from .classification import MambaForSequenceClassification
from .dynamics import TokenDynamics, Trajectory, plot_token_norms
from .patching import (
    ProjectionReport,
    find_mixers,
    from_pretrained,
    is_patched,
    patch,
    project_stable,
    unpatch,
)
from .reorder import ImportanceReorder, soft_sort
from .stable import SignDefiniteProjection

__all__ = [
    "DynamicsReport",
    "LayerDynamics",
    "TokenDynamics",
    "Trajectory",
    "analyze",
    "classify_spectrum",
    "plot_token_norms",
    "symmetric_spectrum",
    "ImportanceReorder",
    "MambaForSequenceClassification",
    "ProjectionReport",
    "SignDefiniteProjection",
    "find_mixers",
    "from_pretrained",
    "is_patched",
    "patch",
    "project_stable",
    "soft_sort",
    "unpatch",
]
