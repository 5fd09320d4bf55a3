"""CGConv: Clifford-group equivariant message passing over edges and k-hop paths."""

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing
from torch_geometric.nn.aggr import Aggregation, MeanAggregation, SumAggregation

from .algebra import CliffordAlgebra
from .layers import CEMLP
from .transforms import PATH_MODES, khop_paths

EQUIVARIANT_AGGREGATIONS = ("sum", "add", "mean")


def check_aggregation(aggr: str | Aggregation) -> None:
    r"""Raise a ``ValueError`` unless ``aggr`` commutes with the Clifford-group action.

    An aggregation :math:`A` of multivector messages is equivariant iff :math:`A(\rho(v) m_1, \ldots) =
    \rho(v) A(m_1, \ldots)`. Sum and mean are linear with weights that do not depend on the messages, so
    they commute with the linear map :math:`\rho(v)`. ``max``, ``min``, ``std``, ``var``, ``softmax``,
    ``median`` and the other PyG aggregations act on each blade coefficient separately (or weight messages by
    their coefficients), which a rotation mixes: they are rejected.
    """
    if isinstance(aggr, str) and aggr in EQUIVARIANT_AGGREGATIONS:
        return
    if isinstance(aggr, (SumAggregation, MeanAggregation)):
        return
    raise ValueError(
        f"Expected an aggregation that commutes with the Clifford-group action, one of "
        f"{EQUIVARIANT_AGGREGATIONS} (or SumAggregation / MeanAggregation), got {aggr!r}: aggregations "
        "that act on each blade coefficient separately (max, min, std, softmax, median, ...) are not "
        "rotation equivariant on multivectors"
    )


def path_geometry(pos: Tensor, path: Tensor, algebra: CliffordAlgebra) -> Tensor:
    r"""Equivariant geometric features of paths :math:`p_0 \leftarrow p_1 \leftarrow \cdots \leftarrow p_k`.

    With :math:`r_t = x_{p_{t-1}} - x_{p_t}` embedded as vectors, returns every contiguous product
    :math:`r_s r_{s+1} \cdots r_t` (:math:`1 \le s \le t \le k`), ordered by :math:`s`, then :math:`t`:
    for ``k = 2`` the channels :math:`r_1, r_1 r_2, r_2`
    (:math:`r_1 r_2` = scalar :math:`r_1 \cdot r_2` + bivector :math:`r_1 \wedge r_2`),
    for ``k = 3`` :math:`r_1, r_1 r_2, r_1 r_2 r_3, r_2, r_2 r_3, r_3` (with the trivector of
    :math:`r_1 r_2 r_3`, an oriented volume).

    Shapes: ``pos [N, n]``, ``path [k + 1, P]`` -> ``[P, k (k + 1) / 2, 2**n]``.
    """
    rel = algebra.embed_vector(pos[path[:-1]] - pos[path[1:]])  # [k, P, 2**n]
    k = rel.size(0)
    channels = []
    for start in range(k):  # k <= 3 in practice: at most six products, each vectorised over all paths
        product = rel[start]
        channels.append(product)
        for stop in range(start + 1, k):
            product = algebra.geometric_product(product, rel[stop])
            channels.append(product)
    return torch.stack(channels, dim=1)


class CGConv(MessagePassing):
    r"""Clifford-group equivariant graph convolution with k-hop path messages (our CG-EGNN formulation,
    after Tran et al., "A Clifford Algebraic Approach to E(n)-Equivariant High-order Graph Neural Networks",
    built on the CGENN layers of Ruhe et al., 2023).

    For every order :math:`k = 1, \ldots, K` (``hops``) and path
    :math:`p = (i = p_0 \leftarrow p_1 \leftarrow \cdots \leftarrow p_k)`:

    .. math::
        m^{(k)}_p = \phi_k\Big(\big[h_{p_0} - h_{p_1}, \ldots, h_{p_{k-1}} - h_{p_k},\
            \{r_s \cdots r_t\}_{1 \le s \le t \le k},\ e_{p_0 p_1}\big]\Big), \qquad
        a^{(k)}_i = \mathop{\mathrm{aggr}}_{p:\, p_0 = i} m^{(k)}_p

    .. math::
        h'_i = \psi\big([h_i, a^{(1)}_i, \ldots, a^{(K)}_i]\big)

    where :math:`r_t = x_{p_{t-1}} - x_{p_t}` are relative positions embedded as vectors, the products are
    geometric products (:func:`path_geometry`), :math:`e` are edge attributes (order 1 only), and
    :math:`\phi_k, \psi` are :class:`~pyg_clifford.layers.CEMLP` s. ``hops = 1`` is a CGENN message-passing
    layer. Every operation is Clifford-group equivariant, so :math:`h'` transforms like :math:`h` under
    :math:`O(n)` (and is translation invariant, since only relative positions enter).

    Args:
        in_channels (int): input multivector channels.
        out_channels (int): output multivector channels.
        algebra (CliffordAlgebra): the algebra; positions have ``algebra.dim`` coordinates.
        hops (int): longest path order :math:`K \ge 1`. (default: :obj:`1`)
        aggr (str or Aggregation): aggregation of messages; only aggregations that commute with the group
            action are accepted (``"sum"``, ``"add"``, ``"mean"``), others raise a ``ValueError``
            (:func:`check_aggregation`). (default: :obj:`"mean"`)
        edge_channels (int): channels of ``edge_attr`` (scalars ``[E, C_e]`` or multivectors
            ``[E, C_e, 2**n]``). (default: :obj:`0`)
        hidden_channels (int, optional): width of the messages and MLPs (default: ``out_channels``).
        mlp_layers (int): blocks in each :class:`CEMLP`. (default: :obj:`1`)
        path_mode (str): how paths are enumerated when they are not given (see
            :func:`~pyg_clifford.transforms.khop_paths`). (default: :obj:`"walk"`)
        **kwargs (optional): additional arguments of :class:`torch_geometric.nn.conv.MessagePassing`.

    The layer is Clifford-group equivariant for any signature of the algebra: rotations and reflections for
    :math:`Cl(n, 0)`, and also Lorentz boosts for :math:`Cl(1, 3)` (tested in float64 with
    :func:`pyg_clifford.testing.assert_equivariant`). A hop order with no paths (or an empty ``edge_index``)
    gives a zero aggregate. Index ranges are not checked here (that would synchronise with the device and
    break ``torch.compile`` graphs): :func:`~pyg_clifford.transforms.khop_paths`, :class:`KHopPaths` and
    :func:`~pyg_clifford.transforms.check_edge_index` check them where the data are prepared. This is not
    :class:`torch_geometric.nn.conv.CGConv` (the crystal-graph convolution).

    Shapes:
        - **input:** node features :math:`(|\mathcal{V}|, C_{in}, 2^n)`,
          edge indices :math:`(2, |\mathcal{E}|)`,
          positions :math:`(|\mathcal{V}|, n)` (optional; missing positions give zero geometric channels),
          edge attributes (optional), paths ``[path2_index, path3_index, ...]`` of shapes
          :math:`(k + 1, P_k)` (optional; enumerated on the fly when missing, see :class:`KHopPaths`)
        - **output:** :math:`(|\mathcal{V}|, C_{out}, 2^n)`
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        algebra: CliffordAlgebra,
        hops: int = 1,
        aggr: str = "mean",
        edge_channels: int = 0,
        hidden_channels: int | None = None,
        mlp_layers: int = 1,
        path_mode: str = "walk",
        **kwargs,
    ) -> None:
        if hops < 1:
            raise ValueError(f"Expected hops >= 1, got {hops}")
        if path_mode not in PATH_MODES:
            raise ValueError(f"Expected path_mode in {PATH_MODES}, got {path_mode!r}")
        check_aggregation(aggr)
        super().__init__(aggr=aggr, node_dim=0, **kwargs)
        self.in_channels, self.out_channels, self.algebra = in_channels, out_channels, algebra
        self.hops, self.edge_channels, self.path_mode = hops, edge_channels, path_mode
        hidden = hidden_channels or out_channels
        self.message_mlps = nn.ModuleList(
            CEMLP(
                k * in_channels + k * (k + 1) // 2 + (edge_channels if k == 1 else 0),
                hidden,
                hidden,
                algebra,
                mlp_layers,
            )
            for k in range(1, hops + 1)
        )
        self.update_mlp = CEMLP(in_channels + hops * hidden, hidden, out_channels, algebra, mlp_layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for mlp in self.message_mlps:
            mlp.reset_parameters()
        self.update_mlp.reset_parameters()

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        pos: Tensor | None = None,
        edge_attr: Tensor | None = None,
        paths: Sequence[Tensor] | None = None,
    ) -> Tensor:
        num_nodes, blades = x.size(0), self.algebra.num_blades
        if x.dim() != 3 or x.shape[1:] != (self.in_channels, blades):
            raise ValueError(
                f"Expected x of shape [num_nodes, {self.in_channels}, {blades}], got {tuple(x.shape)}"
            )
        _check_index_shape(edge_index, "edge_index", 2)
        if pos is not None and pos.shape != (num_nodes, self.algebra.dim):
            raise ValueError(
                f"Expected pos of shape [{num_nodes}, {self.algebra.dim}], got {tuple(pos.shape)}"
            )
        edge_mv = self._edge_multivectors(edge_attr, edge_index.size(1))
        if paths is None:
            paths = khop_paths(edge_index, num_nodes, self.hops, self.path_mode) if self.hops > 1 else []
        if len(paths) < self.hops - 1:
            raise ValueError(
                f"Expected {self.hops - 1} path tensors (path2_index..path{self.hops}_index), "
                f"got {len(paths)}"
            )
        all_paths = [edge_index.flip(0), *paths[: self.hops - 1]]
        aggregates = []
        for order, path in enumerate(all_paths, start=1):  # loop over hop orders; each is vectorised
            if order > 1:
                _check_index_shape(path, f"path{order}_index", order + 1)
            inputs = self._path_inputs(x, pos, path, edge_mv if order == 1 else None)
            aggregates.append(
                self.propagate(path[[-1, 0]], inputs=inputs, order=order, size=(num_nodes, num_nodes))
            )
        return self.update_mlp(torch.cat([x, *aggregates], dim=1))

    def message(self, inputs: Tensor, order: int) -> Tensor:
        return self.message_mlps[order - 1](inputs)

    def _edge_multivectors(self, edge_attr: Tensor | None, num_edges: int) -> Tensor | None:
        if self.edge_channels == 0:
            if edge_attr is not None:
                raise ValueError("Got edge_attr but the layer was built with edge_channels=0")
            return None
        blades = self.algebra.num_blades
        if edge_attr is None:
            raise ValueError(
                f"Expected edge_attr of shape [{num_edges}, {self.edge_channels}(, {blades})], got None"
            )
        if edge_attr.shape == (num_edges, self.edge_channels):
            return self.algebra.embed_scalar(edge_attr)
        if edge_attr.shape == (num_edges, self.edge_channels, blades):
            return edge_attr
        raise ValueError(
            f"Expected edge_attr of shape [{num_edges}, {self.edge_channels}] (scalars) or "
            f"[{num_edges}, {self.edge_channels}, {blades}] (multivectors), got {tuple(edge_attr.shape)}"
        )

    def _path_inputs(self, x: Tensor, pos: Tensor | None, path: Tensor, edge_mv: Tensor | None) -> Tensor:
        """Message inputs ``[P, k C_in + k (k + 1) / 2 (+ C_e), 2**n]`` of paths ``[k + 1, P]``."""
        k, num_paths = path.size(0) - 1, path.size(1)
        shape = (k, num_paths, *x.shape[1:])  # index_select: its backward is an index_add, not an index_put
        heads = x.index_select(0, path[:-1].reshape(-1)).view(shape)
        differences = (heads - x.index_select(0, path[1:].reshape(-1)).view(shape)).permute(1, 0, 2, 3)
        differences = differences.reshape(num_paths, k * x.size(1), x.size(2))
        if pos is None:
            geometry = x.new_zeros(num_paths, k * (k + 1) // 2, x.size(-1))
        else:
            geometry = path_geometry(pos.to(x.dtype), path, self.algebra)
        parts = [differences, geometry] + ([edge_mv] if edge_mv is not None else [])
        return torch.cat(parts, dim=1)

    def __repr__(self) -> str:
        name = self.__class__.__name__
        return f"{name}({self.in_channels}, {self.out_channels}, hops={self.hops}, aggr={self.aggr})"


def _check_index_shape(index: Tensor, name: str, rows: int) -> None:
    """Shape and dtype check of an index tensor (no value check: nothing that synchronises)."""
    if index.dim() != 2 or index.size(0) != rows or index.is_floating_point():
        raise ValueError(
            f"Expected {name} of shape [{rows}, num_{'edges' if rows == 2 else 'paths'}] with integer "
            f"entries, got {tuple(index.shape)}"
        )
