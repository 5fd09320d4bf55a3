"""timm's own model test suite (its ``tests/test_models.py``) on 8 ViT-family models, per attention.

This file is both the driver and a pytest plugin (``-p benchmarks.timm_robust_attn_timm_suite``). The
plugin keeps timm's generic model tests (forward, backward, default configs, features, intermediates, FX
forward and backward, TorchScript, FX + TorchScript) for the models in ``MODELS`` (one config tag each),
builds every model with ``depth=3`` (a CPU budget) and passes ``attn_layer=<attention>`` (or ``attn=``) to
every ``create_model`` call of the suite. timm's test file is not part of this repository: check it out
anywhere, e.g.

    git -C <pytorch-image-models clone> show HEAD:tests/test_models.py > /tmp/timm_tests/tests/test_models.py
    touch /tmp/timm_tests/tests/__init__.py
    OMP_NUM_THREADS=1 python -m benchmarks.timm_robust_attn_timm_suite /tmp/timm_tests/tests/test_models.py

and it prints passed / failed / skipped per attention (``softmax`` is timm's own ``Attention``).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

import pytest

MODELS = (
    "vit_tiny_patch16_224", "deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224",
    "vit_wee_patch16_reg1_gap_256", "vit_pwee_patch16_reg1_gap_256", "vit_small_patch16_18x2_224",
    "vit_base_patch16_siglip_224", "vit_base_patch16_xp_224",
)
TESTS = frozenset({
    "test_model_forward", "test_model_backward", "test_model_default_cfgs",
    "test_model_default_cfgs_non_std", "test_model_forward_torchscript", "test_model_forward_features",
    "test_model_forward_intermediates_features", "test_model_forward_intermediates", "test_model_forward_fx",
    "test_model_backward_fx", "test_model_forward_fx_torchscript",
})
ATTENTIONS = ("softmax", "kde", "rkde", "spkde", "mom")
ATTN_ENV, KEYWORD_ENV = "TIMM_ROBUST_ATTN", "TIMM_ROBUST_ATTN_KEYWORD"


def pytest_configure(config: pytest.Config) -> None:
    import timm_robust_attn  # noqa: F401  (registers the attentions)

    for marker in ("base", "cfg", "torchscript", "features", "fxforward", "fxbackward", "timeout"):
        config.addinivalue_line("markers", f"{marker}: timm's marker")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, drop, seen = [], [], set()
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        model = str(params.get("model_name", "")).split(".")[0]  # cfg tests list every pretrained tag
        key = (getattr(item, "originalname", item.name), model)
        (keep if key[0] in TESTS and model in MODELS and key not in seen else drop).append(item)
        seen.add(key)
    items[:] = keep
    config.hook.pytest_deselected(items=drop)


@pytest.fixture(autouse=True)
def _robust_attention(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``create_model`` of timm's test module builds a depth-3 model with the chosen attention."""
    attention = os.environ.get(ATTN_ENV, "softmax")
    keyword = os.environ.get(KEYWORD_ENV, "attn_layer")
    create_model = request.module.create_model

    def create(name: str, *args, **kwargs):
        kwargs.setdefault("depth", 3)
        if attention != "softmax":
            kwargs[keyword] = attention
        return create_model(name, *args, **kwargs)

    monkeypatch.setattr(request.module, "create_model", create)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("test_models", help="path to timm's tests/test_models.py (checked out elsewhere)")
    parser.add_argument("--attentions", nargs="+", default=list(ATTENTIONS), choices=ATTENTIONS)
    parser.add_argument("--keyword", default="attn_layer", choices=("attn_layer", "attn"),
                        help="create_model keyword that selects the attention")
    args = parser.parse_args()
    print(f"keyword {args.keyword}=, depth 3, {len(MODELS)} models")
    print("| attention | passed | failed | skipped |")
    print("|---|---|---|---|")
    for attention in args.attentions:
        env = {**os.environ, ATTN_ENV: attention, KEYWORD_ENV: args.keyword}
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", __spec__.name,
                   args.test_models]
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-300:]
        counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|error)", summary)}
        failed = counts.get("failed", 0) + counts.get("error", 0)
        passed, skipped = counts.get("passed", 0), counts.get("skipped", 0)
        print(f"| {attention} | {passed} | {failed} | {skipped} |", flush=True)


if __name__ == "__main__":
    main()
