r"""CMU motion capture, subject 35 walking (GMN protocol), read from the community's local ``motion.pkl``."""

import os.path as osp
import pickle
from collections.abc import Callable

import numpy as np
import torch
from torch_geometric.data import Data, InMemoryDataset
from torch_geometric.utils import coalesce, to_undirected

from .transforms import khop_paths

TRIALS = {
    "train": (20, 1, 17, 13, 14, 9, 4, 2, 7, 5, 16),
    "val": (3, 8, 11, 12, 15, 18),
    "test": (6, 19, 21, 0, 22, 10),
}
"""GMN's split of the 23 walking trials of subject 35 (indices into the trial list of ``motion.pkl``)."""

STICKS = ((0, 11), (12, 13), (2, 3), (7, 8), (17, 18), (24, 25))
"""Bones that GMN treats as sticks (root-lowerback, upperback-thorax, femur-tibia, clavicle-humerus)."""

CMU_SKELETON = (
    (0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (0, 6), (6, 7), (7, 8), (8, 9), (9, 10),
    (0, 11), (11, 12), (12, 13), (13, 14), (14, 15), (15, 16),
    (13, 17), (17, 18), (18, 19), (19, 20), (20, 21), (21, 22), (20, 23),
    (13, 24), (24, 25), (25, 26), (26, 27), (27, 28), (28, 29), (27, 30),
)  # fmt: skip
"""The 31-joint CMU skeleton (ASF order: root, left leg, right leg, spine and head, left arm, right arm)."""


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles containers, numbers and NumPy arrays only: a pickle that names any other global (which
    could run code on load) is refused."""

    allowed = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.allowed:
            raise pickle.UnpicklingError(f"{module}.{name} is not an array type")
        return super().find_class(module, name)


def load_array_pickle(path: str):
    """Load a pickle of containers and NumPy arrays (GMN's ``motion.pkl``, ``split.pkl``) without running
    arbitrary code; raises ``ValueError`` naming the file otherwise."""
    with open(path, "rb") as file:
        try:
            return _ArrayUnpickler(file).load()
        except pickle.UnpicklingError as error:
            raise ValueError(f"Refusing to load {path}: {error}") from error


def gmn_start_frames(num_candidates: int = 300, per_trial: int = 100, seed: int = 100) -> tuple[dict, ...]:
    """GMN's start frames when no ``split.pkl`` is given: with NumPy's legacy generator seeded at ``seed``,
    ``per_trial`` distinct frames out of ``range(num_candidates)`` for every trial, train, val, test in turn.
    Returns one ``{trial: frames}`` dict per split."""
    rng = np.random.RandomState(seed)
    candidates = np.arange(num_candidates)
    return tuple(
        {trial: rng.choice(candidates, size=per_trial, replace=False) for trial in TRIALS[split]}
        for split in ("train", "val", "test")
    )


class CMUMotion(InMemoryDataset):
    r"""Future-pose prediction on CMU motion capture, subject 35 walking (GMN protocol, Huang et al., 2022).

    Reads ``root/raw/motion.pkl``, the preprocessed file the GMN code ships and the community reuses: a pickle
    of ``(bones, trials)`` with ``bones`` a list of joint pairs and ``trials`` a list of 23 arrays
    ``[T, 31, 3]`` (joint positions of each walking trial). ``root/raw/split.pkl`` (GMN's
    ``(train, val, test)`` dicts ``{trial: start frames}``) is used when present, else the same frames are
    drawn as GMN does (:func:`gmn_start_frames`). Nothing is downloaded.

    Trials ``TRIALS[split]``; per trial the first ``max_samples // len(trials)`` start frames ``t`` (GMN:
    200 train, 600 val / test samples, so 18 / 100 / 100 per trial). Input positions :math:`x_t`, velocity
    :math:`v_t = x_{t+1} - x_t`, target :math:`x_{t + \Delta}` with :math:`\Delta` = ``delta_frame`` (30).
    Edges: the bones and the 2-hop pairs of the skeleton, ``edge_attr = [is_bone, is_2hop, is_stick]``
    (hop type as in GMN, one-hot, and GMN's stick flag); ``node_attr = [|v|, 1]`` (GMN's constant "Z").

    Args:
        root (str): directory with ``raw/motion.pkl``; the processed cache goes to ``root/processed``.
        split (str): ``"train"``, ``"val"`` or ``"test"``.
        max_samples (int, optional): samples of the split before rounding down to a multiple of its trials.
            (default: 200 for train, 600 otherwise)
        delta_frame (int): frames between input and target. (default: :obj:`30`)
    """

    splits = ("train", "val", "test")

    def __init__(
        self,
        root: str,
        split: str = "train",
        max_samples: int | None = None,
        delta_frame: int = 30,
        transform: Callable | None = None,
        pre_transform: Callable | None = None,
        force_reload: bool = False,
    ) -> None:
        if split not in self.splits:
            raise ValueError(f"Expected split in {self.splits}, got {split!r}")
        if delta_frame < 1:
            raise ValueError(f"Expected delta_frame >= 1, got {delta_frame}")
        self.split, self.delta_frame = split, delta_frame
        self.max_samples = max_samples if max_samples is not None else (200 if split == "train" else 600)
        if self.max_samples < len(TRIALS[split]):
            raise ValueError(f"Expected max_samples >= {len(TRIALS[split])} (one a trial), got {max_samples}")
        super().__init__(root, transform, pre_transform, force_reload=force_reload)
        self.load(self.processed_paths[0])

    @property
    def raw_file_names(self) -> list[str]:
        return ["motion.pkl"]

    @property
    def processed_file_names(self) -> list[str]:
        return [f"cmu35_{self.split}_{self.max_samples}_d{self.delta_frame}.pt"]

    def download(self) -> None:
        raise FileNotFoundError(
            "Expected the CMU motion capture file motion.pkl (GMN's preprocessed subject 35 walking trials: "
            f"a pickle of (bones, [23 arrays [T, 31, 3]])) at {osp.join(self.raw_dir, 'motion.pkl')}; it is "
            "not downloaded by this library (GMN ships it in spatial_graph/motion/)"
        )

    def process(self) -> None:
        bones, trials = self._read_motion()
        split_path = osp.join(self.raw_dir, "split.pkl")
        starts = load_array_pickle(split_path) if osp.exists(split_path) else gmn_start_frames()
        mapping = starts[self.splits.index(self.split)]
        per_trial = self.max_samples // len(mapping)
        num_joints = trials[0].shape[1]
        edge_index, edge_attr = self._edges(bones, num_joints)
        data_list = []
        for trial, frames in mapping.items():
            positions = torch.from_numpy(np.asarray(trials[trial], dtype=np.float32))
            frames = np.asarray(frames)[:per_trial]
            last = int(frames.max()) + self.delta_frame
            if last >= positions.size(0) - 1:
                raise ValueError(
                    f"Expected trial {trial} of motion.pkl to have more than {last + 1} frames for start "
                    f"frame {int(frames.max())} and delta_frame {self.delta_frame}, got {positions.size(0)}"
                )
            for t in frames.tolist():
                vel = positions[t + 1] - positions[t]
                data_list.append(
                    Data(
                        pos=positions[t],
                        vel=vel,
                        node_attr=torch.cat([vel.norm(dim=-1, keepdim=True), torch.ones(num_joints, 1)], -1),
                        edge_index=edge_index,
                        edge_attr=edge_attr,
                        y=positions[t + self.delta_frame],
                        trial=torch.tensor([trial]),
                        frame=torch.tensor([t]),
                    )
                )
        if self.pre_transform is not None:
            data_list = [self.pre_transform(d) for d in data_list]
        self.save(data_list, self.processed_paths[0])

    def _read_motion(self) -> tuple[np.ndarray, list[np.ndarray]]:
        path = osp.join(self.raw_dir, "motion.pkl")
        content = load_array_pickle(path)
        if not (isinstance(content, tuple | list) and len(content) == 2):
            raise ValueError(f"Expected {path} to hold a pair (bones, trials), got {type(content).__name__}")
        bones, trials = np.asarray(content[0]), list(content[1])
        needed = max(max(ids) for ids in TRIALS.values()) + 1
        if bones.ndim != 2 or bones.shape[1] != 2 or len(trials) < needed:
            raise ValueError(
                f"Expected {path} to hold bones [B, 2] and {needed} trials, got bones {bones.shape} and "
                f"{len(trials)} trials"
            )
        shapes = {np.shape(trial)[1:] for trial in trials}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2 or next(iter(shapes))[1] != 3:
            raise ValueError(f"Expected every trial in {path} of shape [T, joints, 3], got {sorted(shapes)}")
        return bones, trials

    @staticmethod
    def _edges(bones: np.ndarray, num_joints: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Bones and 2-hop pairs, undirected, with ``[is_bone, is_2hop, is_stick]`` per edge."""
        bone_index = to_undirected(torch.from_numpy(bones.T).long(), num_nodes=num_joints)
        two_hop = khop_paths(bone_index, num_joints, 2, mode="shell")[0][[2, 0]]
        edge_index = torch.cat([bone_index, two_hop], dim=1)
        hop_type = torch.cat([torch.zeros(bone_index.size(1)), torch.ones(two_hop.size(1))]).long()
        edge_index, hop_type = coalesce(edge_index, hop_type, num_joints, reduce="min")
        sticks = torch.tensor(STICKS).t()
        stick_keys = torch.cat([sticks[0] * num_joints + sticks[1], sticks[1] * num_joints + sticks[0]])
        is_stick = torch.isin(edge_index[0] * num_joints + edge_index[1], stick_keys) & (hop_type == 0)
        one_hot = torch.nn.functional.one_hot(hop_type, 2).float()
        return edge_index, torch.cat([one_hot, is_stick.float().unsqueeze(-1)], dim=-1)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({len(self)}, split={self.split!r})"
