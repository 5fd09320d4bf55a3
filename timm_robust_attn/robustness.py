"""Small-ViT robustness study on scikit-learn's digits: data, training, corruptions (``imagecorruptions``) and
L-inf attacks (the Adversarial Robustness Toolbox); both libraries come with the ``bench`` extra.

Used by ``demo/timm_robust_attn.py`` and ``benchmarks/timm_robust_attn_robustness.py``. Images are the 8x8
digits upscaled (bilinear) to ``size x size`` in ``[0, 1]``, one channel; the split is fixed by ``seed``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    "ATTACKS",
    "TrainConfig",
    "adversarial_accuracy",
    "corrupt_images",
    "digits_c",
    "digits_dataset",
    "evaluate",
    "replace_patches",
    "small_vit",
    "train_or_load",
    "weight_gradients",
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


@contextmanager
def weight_gradients(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Within the block, attentions with robust weights (RKDE's KIRWLS, SPKDE's QP) back-propagate through
    them (``weight_grad=True``), so that white-box attacks see the whole function; restored on exit."""
    modules = [m for m in model.modules() if hasattr(m, "weight_grad")]
    before = [m.weight_grad for m in modules]
    for m in modules:
        m.weight_grad = enabled
    try:
        yield model
    finally:
        for m, flag in zip(modules, before, strict=True):
            m.weight_grad = flag


ATTACKS = ("pgd", "apgd", "square")


def adversarial_accuracy(
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        attack: str,
        eps: float,
        iterations: int,
        seed: int = 0,
        batch_size: int = 256,
) -> float:
    """Top-1 accuracy (%) under an L-inf attack from the Adversarial Robustness Toolbox (ART).

    ``"pgd"``: ``ProjectedGradientDescent`` (step ``eps / 4``, no random start); ``"apgd"``:
    ``AutoProjectedGradientDescent`` (cross-entropy, one random start); ``"square"``: the gradient-free
    ``SquareAttack`` with ``iterations`` queries. The model is wrapped in ART's ``PyTorchClassifier`` (pixels
    in ``[0, 1]``); gradient attacks run inside :func:`weight_gradients`, so they differentiate through the
    robust weights. ART draws its random starts from NumPy's global generator, seeded with ``seed``.
    """
    import numpy as np
    from art.attacks.evasion import AutoProjectedGradientDescent, ProjectedGradientDescent, SquareAttack
    from art.estimators.classification import PyTorchClassifier

    if attack not in ATTACKS:
        raise ValueError(f"attack must be one of {ATTACKS}, got {attack!r}")
    model.eval()
    classifier = PyTorchClassifier(
        model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]), nb_classes=10,
        clip_values=(0.0, 1.0), device_type="gpu" if x.is_cuda else "cpu")
    if attack == "pgd":
        runner = ProjectedGradientDescent(classifier, eps=eps, eps_step=eps / 4, max_iter=iterations,
                                          num_random_init=0, batch_size=batch_size, verbose=False)
    elif attack == "apgd":
        runner = AutoProjectedGradientDescent(classifier, eps=eps, eps_step=eps / 4, max_iter=iterations,
                                              nb_random_init=1, batch_size=batch_size,
                                              loss_type="cross_entropy", verbose=False)
    else:
        runner = SquareAttack(classifier, eps=eps, max_iter=iterations, nb_restarts=1, batch_size=batch_size,
                              verbose=False)
    np.random.seed(seed)
    with weight_gradients(model, attack != "square"):
        adversarial = runner.generate(x=x.cpu().numpy(), y=y.cpu().numpy())
    return evaluate(model, torch.from_numpy(adversarial).to(x.device), y, batch_size=batch_size)


def corrupt_images(x: Tensor, corruption: str, severity: int, seed: int = 0) -> Tensor:
    """One ImageNet-C corruption (``imagecorruptions``) of 1-channel images in ``[0, 1]``, ``[n, 1, H, W]``.

    Images go through the library as 8-bit RGB (the gray level copied to three channels) and come back as the
    channel mean; the library's NumPy randomness is seeded with ``seed``.
    """
    import numpy as np
    from imagecorruptions import corrupt

    np.random.seed(seed)
    gray = (x[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    out = [np.asarray(corrupt(np.repeat(img[..., None], 3, -1), corruption_name=corruption,
                              severity=severity), dtype=np.float32).mean(-1) for img in gray]
    return torch.from_numpy(np.stack(out) / 255.0).unsqueeze(1).clamp(0, 1).float()


def digits_c(x: Tensor, cache: Path | None = None, progress: bool = True) -> dict[tuple[str, int], Tensor]:
    """"Digits-C": the 15 ImageNet-C corruptions x 5 severities of ``x``, cached in ``cache`` (``.pt``)."""
    from imagecorruptions import get_corruption_names

    if cache is not None and cache.exists():
        return torch.load(cache, weights_only=True)
    keys = [(name, severity) for name in get_corruption_names() for severity in range(1, 6)]
    table = {key: corrupt_images(x, *key, seed=i) for i, key in enumerate(
        tqdm(keys, desc="digits-C", disable=not progress, leave=False))}
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(table, cache)
    return table
