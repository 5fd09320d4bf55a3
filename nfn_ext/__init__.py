"""nfn_ext: monomial-group equivariant neural functionals (Monomial-NFN, MAGEP-NFN) on top of ``nfn``.

Weight spaces of MLPs/CNNs (:class:`WeightSpace`), the monomial group acting on them
(:func:`random_group_element`), equivariant/invariant layers and models, a local model zoo
(``python -m nfn_ext.zoo``) and an accuracy-prediction trainer (``python -m nfn_ext.train``).
"""

from .group import MonomialGroupElement, random_group_element
from .magep import MAGEPNFN, MAGEPLinear
from .monomial import MonomialEquivariantNFN, MonomialLinear, MonomialNFN, MonomialPool
from .transformer_group import AttentionGroupElement
from .transformer_nfn import PiecewiseLinearEncoding, QuantileNorm, TransformerNFN
from .transformer_predictor import AccuracyPredictor
from .transformer_space import TransformerWeightSpace, TransformerWeightSpaceSpec
from .weight_space import LayerSpec, WeightSpace, WeightSpaceSpec

__all__ = [
    "AccuracyPredictor",
    "AttentionGroupElement",
    "MAGEPNFN",
    "LayerSpec",
    "MAGEPLinear",
    "MonomialEquivariantNFN",
    "MonomialGroupElement",
    "MonomialLinear",
    "MonomialNFN",
    "MonomialPool",
    "PiecewiseLinearEncoding",
    "QuantileNorm",
    "TransformerNFN",
    "TransformerWeightSpace",
    "TransformerWeightSpaceSpec",
    "WeightSpace",
    "WeightSpaceSpec",
    "random_group_element",
]
