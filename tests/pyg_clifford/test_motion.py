"""CMUMotion (GMN protocol) on a tiny file written in GMN's motion.pkl format."""

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from pyg_clifford import CGEGNN, CMUMotion, KHopPaths, train
from pyg_clifford.motion import CMU_SKELETON, STICKS, TRIALS, gmn_start_frames, load_array_pickle

FRAMES = 335  # GMN draws start frames below 300 and predicts 30 frames ahead


def write_motion(root: Path, frames: int = FRAMES) -> list[np.ndarray]:
    """23 random-walk 'trials' of the 31-joint skeleton, pickled as GMN's (bones, trials)."""
    rng = np.random.default_rng(0)
    trials = [np.cumsum(rng.standard_normal((frames, 31, 3)), axis=0) for _ in range(23)]
    (root / "raw").mkdir(parents=True, exist_ok=True)
    with open(root / "raw" / "motion.pkl", "wb") as file:
        pickle.dump((list(CMU_SKELETON), trials), file)
    return trials


def test_gmn_start_frames_follow_its_generator() -> None:
    """Direct evaluation of GMN's code path: np.random.seed(100), then 100 of range(300) per trial."""
    np.random.seed(100)
    expected = [np.random.choice(np.arange(300), size=100, replace=False) for _ in range(23)]
    drawn = [frames for split in gmn_start_frames() for frames in split.values()]
    assert len(drawn) == 23
    for a, b in zip(drawn, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    assert list(gmn_start_frames()[2]) == list(TRIALS["test"])


def test_cmu_motion_protocol_on_a_tiny_file(tmp_path: Path) -> None:
    trials = write_motion(tmp_path)
    splits = {s: CMUMotion(str(tmp_path), s) for s in ("train", "val", "test")}
    assert [len(d) for d in splits.values()] == [11 * 18, 600, 600]  # GMN: 200 // 11 per trial
    starts = dict(zip(("train", "val", "test"), gmn_start_frames(), strict=True))
    for name, dataset in splits.items():
        data = dataset[-1]  # the last start frame used of the last trial of the split
        trial, t = int(data.trial), int(data.frame)
        assert trial == TRIALS[name][-1] and t == starts[name][trial][len(dataset) // len(TRIALS[name]) - 1]
        positions = torch.from_numpy(trials[trial]).float()
        torch.testing.assert_close(data.pos, positions[t])
        torch.testing.assert_close(data.vel, positions[t + 1] - positions[t])
        torch.testing.assert_close(data.y, positions[t + 30])
        torch.testing.assert_close(data.node_attr[:, 0], data.vel.norm(dim=-1))
        assert torch.all(data.node_attr[:, 1] == 1)

    data = splits["train"][0]
    pairs = zip(data.edge_index.t().tolist(), data.edge_attr.tolist(), strict=True)
    edges = {tuple(e): tuple(a) for e, a in pairs}
    bones = {(i, j) for i, j in CMU_SKELETON} | {(j, i) for i, j in CMU_SKELETON}
    adjacency = np.zeros((31, 31), dtype=int)
    for i, j in bones:
        adjacency[i, j] = 1
    two_hop = {(i, j) for i, j in zip(*np.nonzero(adjacency @ adjacency), strict=True) if i != j} - bones
    assert set(edges) == bones | two_hop  # GMN: A and (A @ A without the diagonal), disjoint on a tree
    sticks = {(i, j) for i, j in STICKS} | {(j, i) for i, j in STICKS}
    for edge, attr in edges.items():
        assert attr == (float(edge in bones), float(edge in two_hop), float(edge in sticks))

    model = CGEGNN(node_scalars=2, edge_scalars=3, hidden_channels=4, num_layers=1, hops=2)
    data = KHopPaths(2)(data)
    paths = [data.path2_index]
    pred = model(data.pos, data.edge_index, data.vel, data.node_attr, data.edge_attr, paths=paths)[0]
    assert pred.shape == (31, 3)


def test_cmu_motion_uses_a_given_split_file(tmp_path: Path) -> None:
    write_motion(tmp_path)
    custom = tuple({trial: np.arange(5, 105) for trial in TRIALS[s]} for s in ("train", "val", "test"))
    with open(tmp_path / "raw" / "split.pkl", "wb") as file:
        pickle.dump(custom, file)
    test = CMUMotion(str(tmp_path), "test", max_samples=12)
    assert [int(d.frame) for d in test] == [5, 6] * 6
    assert [int(d.trial) for d in test][::2] == list(TRIALS["test"])


def test_cmu_motion_errors_name_the_expected_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "empty" / "raw" / "motion.pkl")):
        CMUMotion(str(tmp_path / "empty"))
    write_motion(tmp_path / "short", frames=300)
    with pytest.raises(ValueError, match="more than"):
        CMUMotion(str(tmp_path / "short"), "val")
    with pytest.raises(ValueError, match="split"):
        CMUMotion(str(tmp_path), "all")


class Payload:
    def __reduce__(self):
        return (print, ("this must not run",))


def test_motion_pickles_with_foreign_objects_are_refused(tmp_path: Path, capsys) -> None:
    (tmp_path / "raw").mkdir()
    with open(tmp_path / "raw" / "motion.pkl", "wb") as file:
        pickle.dump((list(CMU_SKELETON), [Payload()]), file)
    with pytest.raises(ValueError, match="Refusing to load"):
        CMUMotion(str(tmp_path))
    assert "must not run" not in capsys.readouterr().out
    path = tmp_path / "arrays.pkl"
    with open(path, "wb") as file:
        pickle.dump(({3: np.arange(4)}, [np.float32(2.5)]), file)
    loaded = load_array_pickle(str(path))  # arrays and NumPy scalars are what GMN's pickles hold
    np.testing.assert_array_equal(loaded[0][3], np.arange(4))
    assert loaded[1][0] == 2.5


def test_motion_training_cli(tmp_path: Path) -> None:
    write_motion(tmp_path)
    argv = ["motion", "--root", str(tmp_path), "--num-train", "11", "--num-val", "6", "--num-test", "6"]
    argv += ["--batch-size", "6", "--hidden", "4", "--layers", "1", "--epochs", "1", "--quiet"]
    for model in (["--hops", "2"], ["--model", "egnn"]):
        result = train.main([*argv, *model, "--out", str(tmp_path / model[-1])])
        assert result["task"] == "motion" and math.isfinite(result["test_mse"])
