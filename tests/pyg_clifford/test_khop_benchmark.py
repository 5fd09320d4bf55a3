"""The k-hop study script: statistics, the parameter-matched width, caching and resume of its runs."""

import json
import math
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


def test_each_arm_keeps_the_learning_rate_of_its_best_validation_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # fake runs whose validation MSE is lowest at 1e-2 for hops 1, at 1e-3 for hops 2 and at 2e-3 for EGNN
    best = {"h1": 1e-2, "h2": 1e-3, "h1-wide": 4e-3, "egnn": 2e-3}
    calls = []

    def fake_run(task, name, seed, extra, args):
        arm, lr = name.split("_lr")
        assert float(extra[extra.index("--lr") + 1]) == float(lr)
        calls.append((arm, float(lr), seed))
        return {"best_val_mse": abs(math.log(float(lr) / best[arm])), "seed": seed, "lr": float(lr)}

    captured = {}

    def fake_report(task, results, grids, args):
        captured.update(results=results, grids=grids)
        return ""

    monkeypatch.setattr(khop, "run", fake_run)
    monkeypatch.setattr(khop, "plot", lambda task, results, path: None)
    monkeypatch.setattr(khop, "report", fake_report)
    argv = ["--tasks", "nbody", "--hops", "1", "2", "--seeds", "0", "1", "2", "--hidden", "3"]
    argv += ["--lrs", "1e-3", "4e-3", "1e-2", "--egnn-lrs", "5e-4", "2e-3", "--out", str(tmp_path)]
    khop.main(argv)
    for arm, lr in best.items():
        grid = [1e-3, 4e-3, 1e-2] if arm != "egnn" else [5e-4, 2e-3]
        assert sorted(g for a, g, seed in calls if a == arm and seed == 0) == grid  # the grid at seed 0 only
        assert [(g, seed) for a, g, seed in calls if a == arm and seed > 0] == [(lr, 1), (lr, 2)]
        assert [(r["lr"], r["seed"]) for r in captured["results"][arm]] == [(lr, 0), (lr, 1), (lr, 2)]
        assert sorted(captured["grids"][arm]) == grid


def test_cost_table_extrapolates_timed_steps_to_the_study(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["--tasks", "nbody", "--hops", "1", "2", "--hidden", "3", "--layers", "1", "--egnn-hidden", "4"]
    argv += ["--egnn-layers", "1", "--batch-size", "4", "--cost", "2", "--root", str(tmp_path / "data")]
    # a real timing: positive seconds and the parameter count of the model the trainer builds
    args = khop.build_parser().parse_args([*argv, "--out", str(tmp_path / "real")])
    params, step, evaluation = khop.time_steps("nbody", khop.models("nbody", args)["h2"](4e-3), args)
    assert params == sum(p.numel() for p in CGEGNN(1, 1, 3, 1, hops=2).parameters())
    assert evaluation > 0 and step > 0
    # the extrapolation, against a direct evaluation with fixed step times
    monkeypatch.setattr(khop, "time_steps", lambda task, options, args: (10, 2.0, 0.5))
    sizes = ["--nbody-sizes", "10", "5", "7", "--epochs", "3", "--seeds", "0", "1", "2"]
    sizes += ["--lrs", "4e-3", "--egnn-lrs", "1e-3", "2e-3", "--out", str(tmp_path)]
    summary = khop.main([*argv, *sizes])
    epoch = 3 * 2.0 + (2 + 2) * 0.5  # ceil(10 / 4) steps, ceil(5 / 4) + ceil(7 / 4) evaluation batches
    assert f"| nbody | h1 | 10 | 2.000 | 0.500 | {epoch:.1f} | 3 | {3 * 3 * epoch / 3600:.1f} |" in summary
    assert f"| nbody | egnn | 10 | 2.000 | 0.500 | {epoch:.1f} | 4 | {4 * 3 * epoch / 3600:.1f} |" in summary
    assert summary.count("| nbody |") == 4  # h1, h2, h1-wide, egnn
    assert (tmp_path / "cost.md").read_text() == summary
    assert not (tmp_path / "nbody").exists()  # nothing was trained


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
    for name, accepted in (("h1_lr0.004_s0", True), ("egnn_lr0.001_s0", False)):
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
