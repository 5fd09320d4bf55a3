"""Tour of timm_robust_attn: KIRWLS weights, timm registry and conversion, robustness on digits.

Run with ``python -m demo --only timm_robust_attn`` (about a minute on two idle cores; the corruption and the
attack come from ``imagecorruptions`` and the Adversarial Robustness Toolbox, installed by the ``bench``
extra). The two small ViTs are cached under ``runs/timm_robust_attn``, so a second run only evaluates.
"""

from __future__ import annotations

import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

import timm_robust_attn
from timm_robust_attn import convert_attention, kirwls_weights
from timm_robust_attn.robustness import (
    TrainConfig,
    adversarial_accuracy,
    corrupt_images,
    digits_dataset,
    evaluate,
    replace_patches,
    train_or_load,
)

from .checks import expect

CACHE = Path("runs/timm_robust_attn")


def show_weights() -> None:
    """KIRWLS on 8 clustered unit vectors and one far away: the far one gets a smaller weight."""
    torch.manual_seed(0)
    points = F.normalize(torch.randn(9, 4) * 0.2 + torch.tensor([1.0, 0, 0, 0]), dim=-1)
    points[4] = F.normalize(torch.tensor([-1.0, 0.3, 0, 0]), dim=-1)
    gram = torch.exp(-torch.cdist(points, points).pow(2) / 2)
    for loss in ("huber", "hampel"):
        w = kirwls_weights(gram, iterations=3, loss=loss)
        print(f"  KIRWLS {loss:6s} weights (token 4 is the outlier): " + " ".join(f"{x:.3f}" for x in w))
        expect(int(w.argmin()) == 4, f"KIRWLS-{loss} gives the outlier the smallest weight")


def show_timm_integration() -> None:
    model = timm.create_model("deit_tiny_patch16_224", attn="rkde",
                              attn_kwargs={"loss": "hampel", "iterations": 2}, img_size=64, num_classes=10)
    print(f"  create_model(..., attn='rkde', attn_kwargs=...) -> {model.blocks[0].attn.extra_repr()}")
    softmax = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = softmax(x)
        convert_attention(softmax, "rkde")
        robust = softmax(x)
        convert_attention(softmax, "attn")
        after = softmax(x)
    print(f"  convert_attention: rkde changes logits by {(robust - before).abs().max():.3f}; "
          f"restored softmax reproduces them bit-for-bit: {torch.equal(before, after)}")
    expect(torch.equal(before, after), "converting back to softmax restores the logits bit-for-bit")
    print(f"  registered in timm: {sorted(timm_robust_attn.ROBUST_ATTN_LAYERS)}")


def show_digits_robustness() -> None:
    """Train a small ViT briefly with softmax and with RKDE attention; clean vs contaminated accuracy."""
    data = digits_dataset()
    generator = torch.Generator().manual_seed(0)
    x_test, y_test = data[2], data[3]
    patches = replace_patches(x_test, 0.25, 8, generator)
    noisy = corrupt_images(x_test, "gaussian_noise", severity=3)
    print(f"  digits: {len(data[1])} train / {len(y_test)} test images, upscaled to 32x32, patch 8")
    print("  | attention | clean | 25% patches replaced | ImageNet-C gaussian noise, severity 3 "
          "| ART PGD-10 0.02 (first 100 images) |")
    print("  |---|---|---|---|---|")
    for label, attn, options in (("softmax", "attn", {}), ("rkde huber", "rkde", {"loss": "huber"})):
        start = time.perf_counter()
        config = TrainConfig(attn=attn, attn_kwargs=options, patch_size=8, epochs=20)
        model = train_or_load(config, data, CACHE)
        attack = adversarial_accuracy(model, x_test[:100], y_test[:100], "pgd", eps=0.02, iterations=10)
        row = [evaluate(model, x, y_test) for x in (x_test, patches, noisy)] + [attack]
        cells = " | ".join(f"{a:.1f}" for a in row)
        print(f"  | {label} | {cells} |   ({time.perf_counter() - start:.0f}s)")


def main() -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    print("1. Robust KDE weights")
    show_weights()
    print("2. timm integration")
    show_timm_integration()
    print("3. Small ViT on digits (brief training, accuracy %)")
    show_digits_robustness()


if __name__ == "__main__":
    main()
