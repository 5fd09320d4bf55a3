"""The k-hop study script: statistics, the parameter-matched width, caching and resume of its runs."""

import json
from pathlib import Path

import pytest

from benchmarks import pyg_clifford_khop as khop
from pyg_clifford import CGEGNN


def test_paired_difference_has_a_student_t_interval() -> None:
    # differences 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.302653 -> half width 4.302653 / sqrt(3) = 2.48414
    assert khop.paired([2.0, 4.0, 6.0], [1.0, 2.0, 3.0]) == "+2.00000 [-0.48414, +4.48414] (no difference)"
    assert khop.paired([1.0, 1.1, 1.2], [2.0, 2.0, 2.0]).endswith("(lower)")
    assert khop.mean_std([1.0, 3.0]) == "2.00000 +- 1.41421"


def test_diverged_runs_are_counted_not_averaged() -> None:
    nan = float("nan")
    assert khop.mean_std([1.0, nan, 3.0]) == "2.00000 +- 1.41421 (1 seeds diverged)"
    assert khop.mean_std([nan, float("inf")]) == "diverged in all 2 seeds"
    with_nan = khop.paired([2.0, nan, 4.0, 6.0], [1.0, 1.0, 2.0, 3.0])
    assert with_nan == "+2.00000 [-0.48414, +4.48414] (no difference; 1 diverged seeds left out)"  # as above
    assert "no interval" in khop.paired([nan, 1.0], [1.0, 1.0])


def test_matched_width_is_the_closest_parameter_count() -> None:
    def count(width: int, hops: int) -> int:
        return sum(p.numel() for p in CGEGNN(1, 1, width, 2, hops=hops).parameters())

    width = khop.matched_width(6, 2, 2, 1)
    target = count(6, 2)
    assert width > 6
    gaps = {w: abs(count(w, 1) - target) for w in (width - 1, width, width + 1)}
    assert gaps[width] == min(gaps.values())


@pytest.mark.slow
def test_study_runs_caches_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tasks = ["nbody", "ethanol"] if _has_rdkit() else ["nbody"]
    argv = ["--tasks", *tasks, "--seeds", "0", "1", "--hops", "1", "2", "--epochs", "2", "--batch-size", "5"]
    argv += ["--nbody-sizes", "10", "5", "5", "--md17-sizes", "10", "5", "5", "--hidden", "3"]
    argv += ["--layers", "1", "--egnn-hidden", "4", "--egnn-layers", "1", "--egnn-lrs", "1e-3", "4e-3"]
    argv += ["--frames", "300", "--delta-frame", "20", "--skip", "20"]
    argv += ["--root", str(tmp_path / "data"), "--out", str(tmp_path / "out")]
    summary = khop.main(argv)
    for task in tasks:
        assert (tmp_path / "out" / f"{task}_val.png").stat().st_size > 0
    for row in ("| h1 |", "| h2 |", "| h1-wide |", "| egnn |", "paired h2 - h1:", "paired h2 - h1-wide:"):
        assert summary.count(row) == len(tasks)
    assert (tmp_path / "out" / "summary.md").read_text() == summary
    # the readout's scalar bias feeds no output of a position model: the check must find it unchanged
    assert "h1: readout.bias" in summary and "h2: convs.0.message_mlps" not in summary

    def no_training(argv):
        raise AssertionError(f"finished runs must be read from result.json, not trained: {argv}")

    monkeypatch.setattr(khop.train, "main", no_training)
    again = khop.main(argv)
    assert again.split("wall time")[0] == summary.split("wall time")[0]
    with pytest.raises(ValueError, match="use another --out"):
        khop.main([*argv, "--hidden", "4"])
    # runs from before --clip-grad trained unclipped: still valid for CG-EGNN, refused for the (clipped) EGNN
    for name, accepted in (("h1_s0", True), ("egnn_lr0.001_s0", False)):
        path = tmp_path / "out" / "nbody" / name / "result.json"
        result = json.loads(path.read_text())
        del result["args"]["clip_grad"]
        path.write_text(json.dumps(result))
        if accepted:
            khop.main(argv)
        else:
            with pytest.raises(ValueError, match="clip_grad"):
                khop.main(argv)


def _has_rdkit() -> bool:
    try:
        import rdkit  # noqa: F401
    except ImportError:
        return False
    return True
