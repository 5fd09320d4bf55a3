"""Small-ViT robustness study on scikit-learn's digits: data, training, contamination and L-inf attacks.

Used by ``demo/timm_robust_attn.py`` and ``benchmarks/timm_robust_attn_robustness.py``. Images are the 8x8
digits upscaled (bilinear) to ``size x size`` in ``[0, 1]``, one channel; the split is fixed by ``seed``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .registry import attention_class

__all__ = [
    "TrainConfig",
    "digits_dataset",
    "evaluate",
    "fgsm",
    "gaussian_noise",
    "pgd",
    "replace_patches",
    "small_vit",
    "train_or_load",
]


def digits_dataset(size: int = 32, test_fraction: float = 0.25, seed: int = 0) -> tuple[Tensor, ...]:
    """``x_train [n, 1, size, size]``, ``y_train [n]``, ``x_test``, ``y_test`` from scikit-learn's digits."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


@dataclass(frozen=True)
class TrainConfig:
    """Model and training settings; its hash names the cached checkpoint."""

    attn: str = "attn"
    attn_kwargs: dict[str, Any] = field(default_factory=dict)
    img_size: int = 32
    patch_size: int = 4
    embed_dim: int = 64
    depth: int = 4
    num_heads: int = 4
    epochs: int = 15
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0

    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return f"{self.attn}-{hashlib.sha1(blob).hexdigest()[:10]}"


def small_vit(config: TrainConfig) -> nn.Module:
    """A timm ``VisionTransformer`` for 1-channel digits with the configured attention."""
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=config.img_size, patch_size=config.patch_size,
        in_chans=1, num_classes=10, embed_dim=config.embed_dim, depth=config.depth,
        num_heads=config.num_heads, mlp_ratio=2.0,
        attn_layer=attention_class(config.attn, **config.attn_kwargs))


def train_or_load(config: TrainConfig, data: tuple[Tensor, ...], cache_dir: Path | None = None,
                  progress: bool = True) -> nn.Module:
    """Train ``small_vit(config)`` with AdamW and a cosine schedule, or load it from ``cache_dir``.

    The checkpoint ``<cache_dir>/<config.key()>.pt`` is written once training finishes, so an interrupted
    study resumes at the first model without one.
    """
    torch.manual_seed(config.seed)
    model = small_vit(config)
    path = cache_dir / f"{config.key()}.pt" if cache_dir is not None else None
    if path is not None and path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    x_train, y_train = data[0], data[1]
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.05)
    steps = config.epochs * -(-len(y_train) // config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(config.seed)
    model.train()
    bar = tqdm(total=steps, desc=f"train {config.attn}", disable=not progress, leave=False)
    for _ in range(config.epochs):
        for batch in torch.randperm(len(y_train), generator=generator).split(config.batch_size):
            loss = F.cross_entropy(model(x_train[batch]), y_train[batch], label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model


def evaluate(
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        perturb: Callable[[nn.Module, Tensor, Tensor], Tensor] | None = None,
        batch_size: int = 256,
) -> float:
    """Top-1 accuracy (%) on ``x`` (optionally perturbed per batch by ``perturb(model, x, y)``)."""
    model.eval()
    correct = 0
    for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True):
        if perturb is not None:
            xb = perturb(model, xb, yb)
        with torch.no_grad():
            correct += (model(xb).argmax(-1) == yb).sum().item()
    return 100.0 * correct / len(y)


def replace_patches(x: Tensor, fraction: float, patch: int, generator: torch.Generator) -> Tensor:
    """Replace a random ``fraction`` of the ``patch x patch`` patches of every image with uniform noise."""
    B, C, H, W = x.shape
    grid = (H // patch, W // patch)
    chosen = torch.rand(B, 1, *grid, generator=generator) < fraction
    chosen = chosen.repeat_interleave(patch, -2).repeat_interleave(patch, -1)
    return torch.where(chosen, torch.rand(x.shape, generator=generator), x)


def gaussian_noise(x: Tensor, std: float, generator: torch.Generator) -> Tensor:
    """Add i.i.d. Gaussian noise and clip to ``[0, 1]``."""
    return (x + std * torch.randn(x.shape, generator=generator)).clamp(0, 1)


def _input_grad(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    x = x.detach().requires_grad_()
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y)
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """Fast gradient sign attack :math:`x + \\epsilon\\,\\mathrm{sign}(\\nabla_x \\ell)`, clipped to 0..1."""
    return (x + eps * _input_grad(model, x, y).sign()).clamp(0, 1).detach()


def pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int = 10, step_size: float | None = None,
        ) -> Tensor:
    """L-inf projected gradient descent from ``x`` (no random start), step ``2.5 eps / steps`` by default."""
    step_size = step_size if step_size is not None else 2.5 * eps / steps
    adv = x.clone()
    for _ in range(steps):
        adv = adv + step_size * _input_grad(model, adv, y).sign()
        adv = torch.minimum(torch.maximum(adv, x - eps), x + eps).clamp(0, 1).detach()
    return adv
