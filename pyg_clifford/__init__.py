"""pyg_clifford: Clifford-group equivariant graph networks for PyTorch Geometric.

:class:`CliffordAlgebra` (geometric product as a signed gather), CGENN-style multivector layers,
:class:`CGConv` with k-hop path messages (our CG-EGNN formulation), the :class:`CGEGNN` model, the
:class:`KHopPaths` transform, the charged :class:`NBody` dataset, the local :class:`MD17Trajectory` loader,
:func:`simulate_mmff` (MMFF94 molecular dynamics of the MD17 molecules) and the :class:`CMUMotion` loader;
:mod:`pyg_clifford.testing` checks the equivariance of your own modules.
"""

from . import testing
from .algebra import CliffordAlgebra
from .conv import CGConv, path_geometry
from .layers import CEMLP, MVGradeNorm, MVLayerNorm, MVLinear, MVSiLU, SteerableGeometricProduct
from .md17 import MD17Trajectory
from .mmff import MD17_SMILES, simulate_mmff
from .model import CGEGNN
from .motion import CMUMotion
from .nbody import NBody, simulate_charged
from .transforms import KHopPaths, khop_paths

__all__ = [
    "CEMLP",
    "CGConv",
    "CGEGNN",
    "CMUMotion",
    "CliffordAlgebra",
    "KHopPaths",
    "MVGradeNorm",
    "MVLayerNorm",
    "MVLinear",
    "MD17Trajectory",
    "MD17_SMILES",
    "MVSiLU",
    "NBody",
    "SteerableGeometricProduct",
    "khop_paths",
    "path_geometry",
    "simulate_charged",
    "simulate_mmff",
    "testing",
]
