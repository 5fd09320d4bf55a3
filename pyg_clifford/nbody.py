"""The charged n-body system of EGNN (Satorras et al., 2021), simulated and cached under ``root``."""

import os.path as osp
from collections.abc import Callable

import numpy as np
import torch
from torch_geometric.data import Data, InMemoryDataset
from tqdm.auto import tqdm


def coulomb_forces(loc: np.ndarray, charges: np.ndarray, max_force: float = 100.0) -> np.ndarray:
    r"""Forces :math:`F_i = \sum_{j \ne i} q_i q_j (x_i - x_j) / |x_i - x_j|^3` (like charges repel),
    each component clipped to :math:`\pm` ``max_force``.
    ``loc [S, N, d]``, ``charges [S, N]`` -> ``[S, N, d]``."""
    diff = loc[:, :, None, :] - loc[:, None, :, :]
    dist2 = (diff**2).sum(-1)
    num = loc.shape[1]
    dist2[:, np.arange(num), np.arange(num)] = np.inf
    strength = charges[:, :, None] * charges[:, None, :] / dist2**1.5
    return np.clip((strength[..., None] * diff).sum(2), -max_force, max_force)


def simulate_charged(
    num_sims: int,
    num_particles: int = 5,
    num_frames: int = 41,
    sample_every: int = 100,
    dt: float = 0.001,
    dim: int = 3,
    loc_std: float = 1.0,
    vel_norm: float = 0.5,
    seed: int | np.random.SeedSequence = 0,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Simulate ``num_sims`` charged systems at once (vectorised over systems).

    Charges are :math:`\pm 1` with probability 1/2, positions :math:`\mathcal N(0, \text{loc\_std}^2)`,
    velocities a Gaussian direction of norm ``vel_norm``. Integrator: one kick
    :math:`v \mathrel{+}= \Delta t F(x)`, then for each step :math:`x \mathrel{+}= \Delta t v`, record,
    :math:`v \mathrel{+}= \Delta t F(x)`. Frame ``f`` is recorded after step ``sample_every * (f + 1)`` (as in
    the NRI/EGNN generator, where the 5000-step run gives 49 frames).

    ``seed`` is an integer or a :class:`numpy.random.SeedSequence` (one per split in :class:`NBody`).
    Returns positions and velocities ``[S, num_frames, N, dim]`` and charges ``[S, N]``.
    """
    rng = np.random.default_rng(seed)
    charges = rng.choice(np.array([-1.0, 1.0]), size=(num_sims, num_particles))
    loc = rng.standard_normal((num_sims, num_particles, dim)) * loc_std
    vel = rng.standard_normal((num_sims, num_particles, dim))
    vel *= vel_norm / np.linalg.norm(vel, axis=-1, keepdims=True)
    locs = np.empty((num_sims, num_frames, num_particles, dim))
    vels = np.empty_like(locs)
    vel += dt * coulomb_forces(loc, charges)
    num_steps = sample_every * num_frames
    for step in tqdm(range(1, num_steps + 1), desc="n-body", disable=not progress, mininterval=1.0):
        loc += dt * vel
        if step % sample_every == 0:
            locs[:, step // sample_every - 1], vels[:, step // sample_every - 1] = loc, vel
        vel += dt * coulomb_forces(loc, charges)
    return locs, vels, charges


def nbody_graph(loc: np.ndarray, vel: np.ndarray, target: np.ndarray, charges: np.ndarray) -> Data:
    """A fully connected graph: ``pos``, ``vel``, ``charge [N, 1]``, ``edge_attr = q_i q_j [E, 1]``, ``y``."""
    num = loc.shape[0]
    src, dst = np.nonzero(~np.eye(num, dtype=bool))
    charge = torch.from_numpy(charges).float().unsqueeze(-1)
    edge_index = torch.from_numpy(np.stack([src, dst])).long()
    return Data(
        pos=torch.from_numpy(loc).float(),
        vel=torch.from_numpy(vel).float(),
        charge=charge,
        edge_index=edge_index,
        edge_attr=charge[edge_index[0]] * charge[edge_index[1]],
        y=torch.from_numpy(target).float(),
    )


class NBody(InMemoryDataset):
    r"""Charged 5-body system (EGNN protocol): input positions and velocities at frame 30, target positions
    at frame 40; 3000 / 2000 / 2000 simulations for train / val / test by default.

    Each split is simulated from its own random stream, ``numpy.random.SeedSequence(seed).spawn(3)`` (train,
    val, test), so a split depends only on ``seed`` and its own size: changing ``num_train`` leaves the
    validation and test systems unchanged (the EGNN protocol keeps one fixed test file). Each split is
    simulated once (vectorised over its systems, with a progress bar) and cached in ``root/processed`` under
    a name that carries its size, frames and seed.

    Args:
        root (str): cache directory.
        split (str): ``"train"``, ``"val"`` or ``"test"``.
        num_train, num_val, num_test (int): simulations per split.
        input_frame, target_frame (int): frames of the input and target. (default: 30, 40)
        num_particles (int): particles per system. (default: :obj:`5`)
        seed (int): random seed of the simulation. (default: :obj:`0`)
    """

    splits = ("train", "val", "test")

    def __init__(
        self,
        root: str,
        split: str = "train",
        num_train: int = 3000,
        num_val: int = 2000,
        num_test: int = 2000,
        input_frame: int = 30,
        target_frame: int = 40,
        num_particles: int = 5,
        seed: int = 0,
        transform: Callable | None = None,
        pre_transform: Callable | None = None,
        force_reload: bool = False,
        progress: bool = True,
    ) -> None:
        if split not in self.splits:
            raise ValueError(f"Expected split in {self.splits}, got {split!r}")
        if not 0 <= input_frame < target_frame:
            raise ValueError(f"Expected 0 <= input_frame < target_frame, got {input_frame}, {target_frame}")
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.input_frame, self.target_frame = input_frame, target_frame
        self.num_particles, self.seed, self.progress = num_particles, seed, progress
        super().__init__(root, transform, pre_transform, force_reload=force_reload)
        self.load(self.processed_paths[self.splits.index(split)])

    @property
    def raw_file_names(self) -> list[str]:
        return []

    @property
    def processed_file_names(self) -> list[str]:
        frames = f"f{self.input_frame}-{self.target_frame}"
        return [
            f"charged{self.num_particles}_{split}{self.sizes[split]}_{frames}_s{self.seed}.pt"
            for split in self.splits
        ]

    def download(self) -> None:
        """Nothing to download: the data are simulated in :meth:`process`."""

    def process(self) -> None:
        streams = np.random.SeedSequence(self.seed).spawn(len(self.splits))
        for split, path, stream in zip(self.splits, self.processed_paths, streams, strict=True):
            if osp.exists(path):  # another split size changed; this split is already cached
                continue
            locs, vels, charges = simulate_charged(
                self.sizes[split],
                self.num_particles,
                self.target_frame + 1,
                seed=stream,
                progress=self.progress,
            )
            data_list = [
                nbody_graph(
                    locs[s, self.input_frame],
                    vels[s, self.input_frame],
                    locs[s, self.target_frame],
                    charges[s],
                )
                for s in range(self.sizes[split])
            ]
            if self.pre_transform is not None:
                data_list = [self.pre_transform(d) for d in data_list]
            self.save(data_list, path)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({len(self)}, root={osp.basename(self.root)!r})"
