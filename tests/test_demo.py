"""The demo runner: a failing part makes the tour fail loudly, naming the part, and the others still run."""

from types import SimpleNamespace

import pytest

import demo.__main__ as demo_main


def _fake_parts(monkeypatch: pytest.MonkeyPatch, broken: set[str]) -> list[str]:
    ran: list[str] = []

    def part(name: str) -> SimpleNamespace:
        def main() -> None:
            ran.append(name)
            if name in broken:
                raise RuntimeError(f"{name} is broken")

        return SimpleNamespace(main=main)

    monkeypatch.setattr(demo_main.importlib, "import_module", lambda module: part(module.split(".", 1)[1]))
    return ran


def test_failed_part_exits_non_zero_with_its_name(monkeypatch, capsys):
    ran = _fake_parts(monkeypatch, broken={"timm_robust_attn"})
    with pytest.raises(SystemExit) as exc:
        demo_main.main([])
    assert exc.value.code == "demo failed in 1 of 4 parts: timm_robust_attn"
    assert ran == list(demo_main.PARTS)
    out = capsys.readouterr()
    assert "=== timm_robust_attn: FAILED" in out.out
    assert "RuntimeError: timm_robust_attn is broken" in out.err


def test_all_parts_passing_returns_normally(monkeypatch, capsys):
    ran = _fake_parts(monkeypatch, broken=set())
    demo_main.main(["--only", "nfn_ext", "pyg_clifford"])
    assert ran == ["nfn_ext", "pyg_clifford"]
    assert "all 2 parts passed" in capsys.readouterr().out


def test_every_part_module_has_a_main():
    import importlib

    for name in demo_main.PARTS:
        assert callable(importlib.import_module(f"demo.{name}").main), name
