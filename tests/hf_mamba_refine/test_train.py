"""The standard-library corpus and the training CLI (tiny runs: JSON results, checkpoints, resume)."""

import json
from pathlib import Path

import pytest
import torch

from hf_mamba_refine.data import char_corpus, split_of, stdlib_files
from hf_mamba_refine.train import main

TINY = ["--hidden-size", "16", "--state-size", "4", "--layers", "1", "--seq-len", "16", "--batch-size", "2",
        "--eval-batches", "1", "--checkpoint-every", "1"]


def test_corpus_is_deterministic_and_split_by_file(tmp_path) -> None:
    files = stdlib_files()
    assert files == sorted(files) and len(files) > 100
    splits = {split_of(path) for path in files}
    assert splits == {"train", "val"}
    train = char_corpus("train", 5000)
    assert torch.equal(train, char_corpus("train", 5000, tmp_path))
    assert torch.equal(train, char_corpus("train", 5000, tmp_path))  # from the cache
    assert not torch.equal(train, char_corpus("val", 5000))
    with pytest.raises(ValueError, match="split must be"):
        char_corpus("test", 10)


def test_lm_cli_writes_results_and_resumes(tmp_path) -> None:
    args = ["lm", "--steps", "2", "--max-bytes", "20000", "--out", str(tmp_path), *TINY]
    results = main(args)
    assert [r.variant for r in results] == ["baseline", "stable", "convergent"]
    assert all(r.value > 1 and r.steps == 2 for r in results)
    gathered = json.loads((tmp_path / "lm-results.json").read_text())
    assert [g["variant"] for g in gathered] == ["baseline", "stable", "convergent"]
    run = tmp_path / "lm-stable-seed0"
    (run / "result.json").unlink()
    more = ["lm", "--variants", "stable", "--steps", "3", "--max-bytes", "20000", "--out", str(tmp_path)]
    main([*more, *TINY])
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["step"] == 3 and len(state["losses"]) == 3  # two steps reloaded, one more trained


class _Planted:
    """Unpickling this object would run ``Path.touch(marker)``: stands in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_resume_refuses_a_tampered_checkpoint(tmp_path) -> None:
    run = tmp_path / "lm-baseline-seed0"
    run.mkdir()
    marker = tmp_path / "executed"
    torch.save({"model": {}, "step": 0, "payload": _Planted(marker)}, run / "checkpoint.pt")
    args = ["lm", "--variants", "baseline", "--steps", "1", "--max-bytes", "20000", "--out", str(tmp_path)]
    with pytest.raises(ValueError, match="refusing to resume"):
        main([*args, *TINY])
    assert not marker.exists()


def test_curves_and_diagnostics_are_recorded(tmp_path) -> None:
    args = ["lm", "--variants", "stable", "--steps", "4", "--eval-every", "2", "--curve-batches", "1",
            "--max-bytes", "20000", "--out", str(tmp_path)]
    (result,) = main([*args, *TINY])
    assert [step for step, _ in result.curve] == [0, 2, 4]
    assert all(value > 1 for _, value in result.curve)
    assert result.diagnostics["unchanged_parameters"] == []
    assert result.diagnostics["d_moved_min"] > 0


def test_classify_cli(tmp_path) -> None:
    results = main(["classify", "--steps", "2", "--packages", "json", "email", "--out", str(tmp_path), *TINY])
    assert [r.variant for r in results] == ["plain", "reorder"]
    assert all(0.0 <= r.value <= 1.0 for r in results)
    with pytest.raises(SystemExit):
        main(["classify", "--variants", "stable", "--out", str(tmp_path)])
