"""Vectorised enumeration of k-hop paths, and the transform that stores them on ``Data`` objects."""

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.data.datapipes import functional_transform
from torch_geometric.transforms import BaseTransform

PATH_MODES = ("walk", "shell")


def _extend_paths(paths: Tensor, sources: Tensor, ptr: Tensor) -> Tensor:
    """Append every in-neighbour of the last node of each path, dropping immediate backtracks.

    ``paths``: ``[L, P]`` (row 0 is the receiving node); ``sources``/``ptr``: CSR of incoming edges by target.
    Returns ``[L + 1, P']``.
    """
    end = paths[-1]
    count = ptr[end + 1] - ptr[end]
    owner = torch.repeat_interleave(torch.arange(paths.size(1), device=paths.device), count)
    first = torch.repeat_interleave(ptr[end], count)
    offset = torch.arange(owner.numel(), device=paths.device) - torch.repeat_interleave(
        torch.cumsum(count, 0) - count, count
    )
    new = sources[first + offset]
    extended = torch.cat([paths[:, owner], new.unsqueeze(0)], dim=0)
    return extended[:, new != paths[-2, owner]]


def khop_paths(edge_index: Tensor, num_nodes: int, hops: int, mode: str = "walk") -> list[Tensor]:
    r"""Paths :math:`i \leftarrow j \leftarrow l \ (\leftarrow m \ldots)` of 2 to ``hops`` edges.

    Each path of ``k`` edges is a column ``(p_0, ..., p_k)`` of a ``[k + 1, P_k]`` tensor, with an edge
    :math:`p_{t+1} \to p_t` for every step; :math:`p_0` receives the message.

    - ``"walk"``: all walks without immediate backtracking (:math:`p_{t+2} \ne p_t`).
    - ``"shell"``: only the walks whose end :math:`p_k` is at shortest-path distance exactly ``k`` from
      :math:`p_0` (hop shells; the walks are then shortest paths).

    Self-loops of ``edge_index`` are ignored (a step :math:`i \leftarrow i` has a zero relative vector and
    would only repeat shorter paths). An order with no paths gives a ``[k + 1, 0]`` tensor.

    The cost is linear in the number of paths: one ``repeat_interleave`` gather per hop, no Python loop
    over nodes or edges. Returns ``[path2, ..., path{hops}]`` (empty for ``hops = 1``).
    """
    if hops < 1:
        raise ValueError(f"Expected hops >= 1, got {hops}")
    if mode not in PATH_MODES:
        raise ValueError(f"Expected mode in {PATH_MODES}, got {mode!r}")
    check_edge_index(edge_index, num_nodes)
    edge_index = edge_index[:, edge_index[0] != edge_index[1]]  # drop self-loops
    order = torch.argsort(edge_index[1], stable=True)
    sources = edge_index[0, order]
    ptr = torch.zeros(num_nodes + 1, dtype=torch.long, device=edge_index.device)
    ptr[1:] = torch.cumsum(torch.bincount(edge_index[1], minlength=num_nodes), 0)

    paths = edge_index.flip(0)  # rows (receiver, sender)
    closer = torch.cat(
        [torch.arange(num_nodes, device=edge_index.device) * (num_nodes + 1), _pair_key(paths, num_nodes)]
    )
    out = []
    for _ in range(2, hops + 1):  # a loop over hop orders, each step vectorised over all paths
        paths = _extend_paths(paths, sources, ptr)
        if mode == "shell":
            keys = _pair_key(paths, num_nodes)
            paths = paths[:, ~torch.isin(keys, closer)]
            closer = torch.cat([closer, keys])
        out.append(paths)
    return out


def _pair_key(paths: Tensor, num_nodes: int) -> Tensor:
    return paths[0] * num_nodes + paths[-1]


def check_edge_index(edge_index: Tensor, num_nodes: int, name: str = "edge_index", rows: int = 2) -> None:
    """Raise a ``ValueError`` unless ``edge_index`` is a ``[rows, E]`` integer tensor with entries in
    ``[0, num_nodes)`` (``rows = k + 1`` for the paths of ``k`` edges).

    The range check reads values (a device synchronisation), so it runs where data are prepared
    (:func:`khop_paths`, :class:`KHopPaths`), not in every ``forward``."""
    if edge_index.dim() != 2 or edge_index.size(0) != rows or edge_index.is_floating_point():
        raise ValueError(
            f"Expected {name} of shape [{rows}, num_{'edges' if rows == 2 else 'paths'}] with integer "
            f"entries, got {tuple(edge_index.shape)}"
        )
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= num_nodes):
        raise ValueError(
            f"Expected {name} entries in [0, {num_nodes}) for {num_nodes} nodes, "
            f"got range [{int(edge_index.min())}, {int(edge_index.max())}]"
        )


def check_paths(edge_index: Tensor, paths: list[Tensor], num_nodes: int) -> None:
    r"""Raise a ``ValueError`` unless every step :math:`p_{t+1} \to p_t` of every path in ``paths``
    (``[k + 1, P_k]`` tensors) is an edge of ``edge_index``: catches paths made stale by a transform that
    changed the graph after :class:`KHopPaths` (vectorised: one ``isin`` over edge keys per order)."""
    check_edge_index(edge_index, num_nodes)
    edge_keys = edge_index[0] * num_nodes + edge_index[1]
    for path in paths:
        check_edge_index(path, num_nodes, f"path{path.size(0) - 1}_index", rows=path.size(0))
        step_keys = (path[1:] * num_nodes + path[:-1]).flatten()
        if not bool(torch.isin(step_keys, edge_keys).all()):
            raise ValueError(
                f"Expected every step of path{path.size(0) - 1}_index to be an edge of edge_index: the paths "
                "are stale (apply KHopPaths after every transform that changes nodes or edges)"
            )


@functional_transform("khop_paths")
class KHopPaths(BaseTransform):
    r"""Precompute the k-hop paths of :func:`khop_paths` once per graph and store them as
    ``data.path{k}_index`` (shape ``[k + 1, P_k]``, ``k = 2..hops``).

    The attribute names contain ``"index"``, so :class:`torch_geometric.loader.DataLoader` concatenates them
    along the last axis and shifts them by the number of nodes of the preceding graphs, like ``edge_index``.

    **KHopPaths must be the last transform** (in a :class:`~torch_geometric.transforms.Compose`, or after
    any ``pre_transform``): a transform that changes nodes or edges afterwards (``Data.subgraph``,
    ``RemoveIsolatedNodes``, ``RadiusGraph``, ...) does not know about the path indices and leaves them
    stale. :func:`check_paths` detects stale paths. Self-loops are ignored, and ``edge_index`` entries are
    range-checked here, so that :class:`CGConv` need not synchronise with the device to check them.

    Args:
        hops (int): the longest path, in edges (``>= 2`` to store anything).
        mode (str): ``"walk"`` (non-backtracking walks) or ``"shell"`` (hop shells). (default: ``"walk"``)
    """

    def __init__(self, hops: int = 2, mode: str = "walk") -> None:
        if hops < 1:
            raise ValueError(f"Expected hops >= 1, got {hops}")
        if mode not in PATH_MODES:
            raise ValueError(f"Expected mode in {PATH_MODES}, got {mode!r}")
        self.hops, self.mode = hops, mode

    def forward(self, data: Data) -> Data:
        for k, paths in enumerate(khop_paths(data.edge_index, data.num_nodes, self.hops, self.mode), start=2):
            data[f"path{k}_index"] = paths
        return data

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(hops={self.hops}, mode={self.mode!r})"
