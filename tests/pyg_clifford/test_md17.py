"""MD17Trajectory on a small file written in the sGDML ``*_dft.npz`` format."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pyg_clifford import CGEGNN, MD17Trajectory, train


def write_trajectory(root: Path, frames: int = 80) -> np.ndarray:
    """A C-C-O chain (bonds 1.4 A) with two hydrogens, jiggling over ``frames`` frames."""
    rng = np.random.default_rng(0)
    base = np.array([[0.0, 0, 0], [1.4, 0, 0], [2.8, 0, 0], [-1.0, 0.2, 0], [1.4, 1.0, 0]])
    positions = base + 0.02 * rng.standard_normal((frames, 5, 3))
    (root / "raw").mkdir(parents=True)
    np.savez(root / "raw" / "toy_dft.npz", R=positions, z=np.array([6, 6, 8, 1, 1]), E=np.zeros(frames))
    return positions


def test_md17_protocol_on_a_small_file(tmp_path: Path) -> None:
    positions = write_trajectory(tmp_path)
    kwargs = dict(num_train=10, num_val=5, num_test=5, delta_frame=10, skip=5)
    splits = {s: MD17Trajectory(str(tmp_path), "toy", s, **kwargs) for s in ("train", "val", "test")}
    assert [len(d) for d in splits.values()] == [10, 5, 5]
    data = splits["train"][0]
    assert data.pos.shape == (3, 3)  # heavy atoms only
    edges = {
        tuple(e): tuple(a) for e, a in zip(data.edge_index.t().tolist(), data.edge_attr.tolist(), strict=True)
    }
    assert edges == {
        (0, 1): (1.0, 0.0), (1, 0): (1.0, 0.0), (1, 2): (1.0, 0.0), (2, 1): (1.0, 0.0),
        (0, 2): (0.0, 1.0), (2, 0): (0.0, 1.0),
    }  # fmt: skip
    # find the start frame from the input positions and check velocity, target and features against it
    heavy = positions[:, :3].astype(np.float32)
    t = int(np.argmin(np.abs(heavy - data.pos.numpy()).sum(axis=(1, 2))))
    assert 5 <= t < 80 - 1 - 5 - 10
    torch.testing.assert_close(data.vel, torch.from_numpy(heavy[t + 1] - heavy[t]))
    torch.testing.assert_close(data.y, torch.from_numpy(heavy[t + 10]))
    torch.testing.assert_close(data.node_attr[:, 1], torch.tensor([6 / 8, 6 / 8, 1.0]))
    starts = [tuple(d.pos.flatten().tolist()) for split in splits.values() for d in split]
    assert len(set(starts)) == 20  # splits do not share frames

    model = CGEGNN(node_scalars=2, edge_scalars=2, hidden_channels=4, num_layers=1, hops=2)
    pred = model(data.pos, data.edge_index, data.vel, data.node_attr, data.edge_attr)[0]
    assert pred.shape == (3, 3)


def test_md17_reports_missing_or_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="toy_dft.npz"):
        MD17Trajectory(str(tmp_path / "empty"), "toy")
    write_trajectory(tmp_path, frames=30)
    with pytest.raises(ValueError, match="start frames"):
        MD17Trajectory(str(tmp_path), "toy", num_train=10, num_val=5, num_test=5, delta_frame=10, skip=5)


def test_md17_training_cli(tmp_path: Path) -> None:
    write_trajectory(tmp_path)
    argv = ["md17", "--root", str(tmp_path), "--molecule", "toy", "--delta-frame", "10", "--skip", "5"]
    argv += [
        "--hops",
        "2",
        "--num-train",
        "8",
        "--num-val",
        "4",
        "--num-test",
        "4",
        "--batch-size",
        "4",
        "--hidden",
        "4",
    ]
    result = train.main([*argv, "--layers", "1", "--epochs", "1", "--out", str(tmp_path / "run"), "--quiet"])
    assert result["task"] == "md17" and math.isfinite(result["test_mse"])
