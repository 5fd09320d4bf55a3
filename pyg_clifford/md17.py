"""MD17 trajectories (GMN protocol) read from local ``*_dft.npz`` files (MD17) or ``*_mmff.npz`` files
(:func:`pyg_clifford.simulate_mmff`)."""

import os.path as osp
from collections.abc import Callable

import numpy as np
import torch
from torch_geometric.data import Data, InMemoryDataset
from torch_geometric.utils import coalesce, to_undirected

from .transforms import khop_paths


class MD17Trajectory(InMemoryDataset):
    r"""Future-position prediction on an MD17 trajectory (GMN protocol, Huang et al., ICLR 2022).

    Reads ``root/raw/{molecule}_{source}.npz`` in the sGDML format (``R [T, atoms, 3]`` in Angstrom,
    ``z [atoms]``): ``source="dft"`` is MD17's own file (nothing is downloaded, place it there),
    ``source="mmff"`` the classical MMFF94 trajectory written by ``python -m pyg_clifford.mmff``
    (:func:`~pyg_clifford.simulate_mmff`), read with the same protocol. Heavy atoms only (:math:`z > 1`);
    velocities are frame differences :math:`v_t = R_{t+1} - R_t`; start frames are drawn without
    replacement from ``[skip, T - skip - delta_frame)`` with ``seed`` and split into train / val / test; the
    target is the position ``delta_frame`` frames later. Edges: bonds (heavy-atom distance
    ``< bond_cutoff`` at frame 0) plus the 2-hop pairs of the bond graph, with
    ``edge_attr = [is_bond, is_2hop]``; node features ``node_attr = [|v|, z / z_max]``.

    Args:
        root (str): directory with ``raw/{molecule}_{source}.npz``; the processed cache goes to
            ``root/processed``.
        molecule (str): e.g. ``"aspirin"``.
        split (str): ``"train"``, ``"val"`` or ``"test"``.
        source (str): ``"dft"`` (MD17) or ``"mmff"`` (generated). (default: ``"dft"``)
        num_train, num_val, num_test (int): samples per split. (default: 500 / 2000 / 2000)
        delta_frame (int): frames between input and target. (default: :obj:`3000`)
        skip (int): frames dropped at each end of the trajectory. (default: :obj:`10000`)
        bond_cutoff (float): bond length threshold in Angstrom. (default: :obj:`1.6`)
        seed (int): seed of the frame sampling. (default: :obj:`0`)
    """

    splits = ("train", "val", "test")
    sources = ("dft", "mmff")

    def __init__(
        self,
        root: str,
        molecule: str,
        split: str = "train",
        source: str = "dft",
        num_train: int = 500,
        num_val: int = 2000,
        num_test: int = 2000,
        delta_frame: int = 3000,
        skip: int = 10000,
        bond_cutoff: float = 1.6,
        seed: int = 0,
        transform: Callable | None = None,
        pre_transform: Callable | None = None,
        force_reload: bool = False,
    ) -> None:
        if split not in self.splits:
            raise ValueError(f"Expected split in {self.splits}, got {split!r}")
        if source not in self.sources:
            raise ValueError(f"Expected source in {self.sources}, got {source!r}")
        self.source = source
        self.molecule, self.delta_frame, self.skip = molecule, delta_frame, skip
        self.bond_cutoff, self.seed = bond_cutoff, seed
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        super().__init__(root, transform, pre_transform, force_reload=force_reload)
        self.load(self.processed_paths[self.splits.index(split)])

    @property
    def raw_file_names(self) -> list[str]:
        return [f"{self.molecule}_{self.source}.npz"]

    @property
    def processed_file_names(self) -> list[str]:
        tag = "_".join(
            str(v) for v in [*self.sizes.values(), self.delta_frame, self.skip, self.bond_cutoff, self.seed]
        )
        return [f"{self.molecule}_{self.source}_{tag}_{split}.pt" for split in self.splits]

    def download(self) -> None:
        if self.source == "mmff":
            raise FileNotFoundError(
                f"Expected {self.raw_file_names[0]} in {self.raw_dir}: generate it with "
                f"python -m pyg_clifford.mmff {self.molecule} --out {self.raw_dir}"
            )
        raise FileNotFoundError(
            f"MD17 is not downloaded by this library: place {self.raw_file_names[0]} (keys R, z) "
            f"in {self.raw_dir}"
        )

    def process(self) -> None:
        raw = np.load(osp.join(self.raw_dir, self.raw_file_names[0]))
        for key in ("R", "z"):
            if key not in raw:
                raise ValueError(
                    f"Expected key {key!r} in {self.raw_file_names[0]}, found {sorted(raw.keys())}"
                )
        heavy = raw["z"] > 1
        positions = raw["R"][:, heavy].astype(np.float32)  # [T, atoms, 3]
        z = raw["z"][heavy].astype(np.float32)
        first, stop = self.skip, positions.shape[0] - 1 - self.skip - self.delta_frame
        total = sum(self.sizes.values())
        if stop - first < total:
            raise ValueError(
                f"Expected at least {total} start frames in [{first}, {stop}) of {positions.shape[0]} "
                "frames; lower the split sizes, skip or delta_frame"
            )
        starts = first + np.random.default_rng(self.seed).permutation(stop - first)[:total]
        edge_index, edge_attr = self._edges(torch.from_numpy(positions[0]))
        z_scaled = torch.from_numpy(z / z.max()).unsqueeze(-1)
        begin = 0
        for split, path in zip(self.splits, self.processed_paths, strict=True):
            data_list = []
            for t in starts[begin : begin + self.sizes[split]]:
                vel = torch.from_numpy(positions[t + 1] - positions[t])
                data_list.append(
                    Data(
                        pos=torch.from_numpy(positions[t]),
                        vel=vel,
                        node_attr=torch.cat([vel.norm(dim=-1, keepdim=True), z_scaled], dim=-1),
                        edge_index=edge_index,
                        edge_attr=edge_attr,
                        y=torch.from_numpy(positions[t + self.delta_frame]),
                    )
                )
            if self.pre_transform is not None:
                data_list = [self.pre_transform(d) for d in data_list]
            self.save(data_list, path)
            begin += self.sizes[split]

    def _edges(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bonds (distance < cutoff) and 2-hop pairs, undirected, with one-hot hop type ``[E, 2]``."""
        num = pos.size(0)
        close = (torch.cdist(pos, pos) < self.bond_cutoff) & ~torch.eye(num, dtype=torch.bool)
        bonds = to_undirected(close.nonzero().t(), num_nodes=num)
        two_hop = khop_paths(bonds, num, 2, mode="shell")[0][[2, 0]]  # (far end, receiver)
        edge_index = torch.cat([bonds, two_hop], dim=1)
        hop_type = torch.cat([torch.zeros(bonds.size(1)), torch.ones(two_hop.size(1))]).long()
        edge_index, hop_type = coalesce(edge_index, hop_type, num, reduce="min")
        return edge_index, torch.nn.functional.one_hot(hop_type, 2).float()
