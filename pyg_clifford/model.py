"""CGEGNN: a stack of :class:`CGConv` layers with an equivariant position readout."""

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch_geometric.nn import global_mean_pool
from torch_geometric.utils import scatter

from .algebra import CliffordAlgebra
from .conv import CGConv
from .layers import MVLinear
from .transforms import PATH_MODES, khop_paths


class CGEGNN(nn.Module):
    r"""Clifford-group E(n)-equivariant graph network with k-hop messages.

    Node inputs are embedded as multivector channels: each node scalar (grade 0), the position centred on
    its graph's mean :math:`x_i - \bar x` (grade 1) and, optionally, the velocity (grade 1); a grade-wise
    linear map lifts them to ``hidden_channels``. Then ``num_layers`` residual updates
    :math:`h \leftarrow h + \mathrm{CGConv}(h)` and a linear readout to ``1 + out_scalars`` channels:

    .. math::
        \hat x_i = x_i + \langle o_{i,0} \rangle_1, \qquad s_i = \langle o_{i,1:} \rangle_0, \qquad
        s_G = \mathrm{mean}_{i \in G}\, s_i

    :math:`\hat x` is E(n)-equivariant, :math:`s_i, s_G` are E(n)-invariant, and all are permutation
    equivariant/invariant over nodes.

    Args:
        node_scalars (int): invariant node features per node (e.g. charge). (default: :obj:`1`)
        edge_scalars (int): invariant edge features (e.g. :math:`q_i q_j`). (default: :obj:`1`)
        hidden_channels (int): multivector channels. (default: :obj:`28`)
        num_layers (int): number of :class:`CGConv` layers. (default: :obj:`4`)
        hops (int): longest path order in each layer. (default: :obj:`1`)
        out_scalars (int): invariant outputs per node / graph. (default: :obj:`0`)
        use_velocity (bool): take a velocity vector per node. (default: :obj:`True`)
        algebra (CliffordAlgebra, optional): default :math:`Cl(3, 0)`.
        aggr (str): message aggregation. (default: :obj:`"mean"`)
        mlp_layers (int): blocks per :class:`CEMLP`. (default: :obj:`1`)
        path_mode (str): path enumeration when ``paths`` are not given (see
            :func:`~pyg_clifford.transforms.khop_paths`); they are then enumerated once per forward and
            shared by every layer. (default: :obj:`"walk"`)

    With ``paths`` and ``num_graphs`` given (or ``batch=None``), :meth:`forward` has no data-dependent
    shapes and no device synchronisation, so ``torch.compile(model, fullgraph=True)`` captures it whole.
    """

    def __init__(
        self,
        node_scalars: int = 1,
        edge_scalars: int = 1,
        hidden_channels: int = 28,
        num_layers: int = 4,
        hops: int = 1,
        out_scalars: int = 0,
        use_velocity: bool = True,
        algebra: CliffordAlgebra | None = None,
        aggr: str = "mean",
        mlp_layers: int = 1,
        path_mode: str = "walk",
    ) -> None:
        super().__init__()
        if path_mode not in PATH_MODES:
            raise ValueError(f"Expected path_mode in {PATH_MODES}, got {path_mode!r}")
        self.path_mode = path_mode
        self.algebra = algebra if algebra is not None else CliffordAlgebra((1.0, 1.0, 1.0))
        self.node_scalars, self.edge_scalars, self.out_scalars = node_scalars, edge_scalars, out_scalars
        self.use_velocity, self.hops = use_velocity, hops
        in_channels = node_scalars + 1 + int(use_velocity)
        self.embedding = MVLinear(in_channels, hidden_channels, self.algebra)
        self.convs = nn.ModuleList(
            CGConv(
                hidden_channels,
                hidden_channels,
                self.algebra,
                hops=hops,
                aggr=aggr,
                edge_channels=edge_scalars,
                mlp_layers=mlp_layers,
                path_mode=path_mode,
            )
            for _ in range(num_layers)
        )
        self.readout = MVLinear(hidden_channels, 1 + out_scalars, self.algebra)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""Re-initialise every layer; the readout starts at zero, so the initial prediction is
        :math:`\hat x = x` (training from the identity is stable; a random readout is not)."""
        self.embedding.reset_parameters()
        for conv in self.convs:
            conv.reset_parameters()
        nn.init.zeros_(self.readout.weight)
        nn.init.zeros_(self.readout.bias)

    def forward(
        self,
        pos: Tensor,
        edge_index: Tensor,
        vel: Tensor | None = None,
        node_attr: Tensor | None = None,
        edge_attr: Tensor | None = None,
        batch: Tensor | None = None,
        paths: Sequence[Tensor] | None = None,
        num_graphs: int | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        r"""Returns predicted positions ``[N, n]``, node invariants ``[N, out_scalars]`` and graph invariants
        ``[B, out_scalars]``. Inputs: ``pos, vel [N, n]``, ``node_attr [N, node_scalars]``,
        ``edge_attr [E, edge_scalars]``, ``batch [N]``, ``paths`` as in :class:`CGConv` (enumerated once
        here when missing), ``num_graphs`` (``B``; read from ``batch`` when missing, which synchronises)."""
        n = self.algebra.dim
        if pos.dim() != 2 or pos.size(1) != n:
            raise ValueError(f"Expected pos of shape [num_nodes, {n}], got {tuple(pos.shape)}")
        num_nodes = pos.size(0)
        if batch is None:
            batch, num_graphs = pos.new_zeros(num_nodes, dtype=torch.long), 1
        elif num_graphs is None:
            num_graphs = int(batch.max()) + 1 if batch.numel() else 0
        if paths is None:
            paths = khop_paths(edge_index, num_nodes, self.hops, self.path_mode) if self.hops > 1 else []
        centred = pos - scatter(pos, batch, dim=0, dim_size=num_graphs, reduce="mean")[batch]
        channels = []
        if self.node_scalars:
            if node_attr is None or node_attr.shape != (num_nodes, self.node_scalars):
                shape = None if node_attr is None else tuple(node_attr.shape)
                raise ValueError(
                    f"Expected node_attr of shape [{num_nodes}, {self.node_scalars}], got {shape}"
                )
            channels.append(self.algebra.embed_scalar(node_attr))
        channels.append(self.algebra.embed_vector(centred).unsqueeze(1))
        if self.use_velocity:
            if vel is None or vel.shape != pos.shape:
                raise ValueError(
                    f"Expected vel of shape {tuple(pos.shape)}, "
                    f"got {None if vel is None else tuple(vel.shape)}"
                )
            channels.append(self.algebra.embed_vector(vel).unsqueeze(1))
        h = self.embedding(torch.cat(channels, dim=1))
        for conv in self.convs:
            h = h + conv(h, edge_index, pos=pos, edge_attr=edge_attr, paths=paths)
        out = self.readout(h)
        node_out = out[:, 1:, 0]
        graph_out = global_mean_pool(node_out, batch, size=num_graphs)
        return pos + self.algebra.extract(out[:, 0], 1), node_out, graph_out
