"""A local Small-Transformer-Zoo on scikit-learn's 8x8 digits.

``python -m nfn_ext.zoo build --arch transformer --n 300 --out zoo/vit`` trains :class:`SmallViT` s with the
Small Transformer Zoo's design (Tran et al., ICLR 2025): 4x4 patches, fixed sinusoidal positions,
pre-LayerNorm blocks *without* residual connections, non-affine LayerNorms, 2 heads, ``D <= 32``, 2 blocks,
mean pooling and a linear classifier. Hyperparameters come from :data:`GRID` (optimizer, learning rate, init
std, L2, train fraction, dropout); each member is checkpointed after the epochs in :data:`CHECKPOINTS`, and
every checkpoint is one zoo entry labelled with its test accuracy. Members are written atomically to
``out/members/NNNNN.pt``, so a build resumes; ``--workers`` spreads them over processes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .transformer_space import TransformerWeightSpace
from .zoo import build_members, classification_accuracy, member_setup

GRID: dict[str, list[Any]] = {
    "optimizer": ["sgd", "adam", "rmsprop"],
    "lr": [3e-4, 1e-3, 3e-3, 1e-2],
    "init_std": [0.05, 0.1, 0.2, 0.4],
    "l2": [0.0, 1e-4, 1e-3, 1e-2],
    "train_fraction": [0.1, 0.25, 0.5, 1.0],
    "dropout": [0.0, 0.1, 0.2],
}
CHECKPOINTS = (1, 2, 4, 8)
#: an epoch is at least this many batches of 32 (small train fractions repeat their examples)
MIN_STEPS = 20


def sinusoidal_positions(n: int, d: int) -> Tensor:
    """``(n, d)`` fixed sinusoidal position encodings (Vaswani et al., 2017)."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(n, d)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: d // 2])
    return pe


class SmallViTBlock(nn.Module):
    """``x -> Attn(LN(x)) -> W_B relu(W_A LN(.) + b_A) + b_B``: no residuals, LayerNorms without affine."""

    def __init__(self, d_model: int, num_heads: int, d_mlp: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model, elementwise_affine=False)
        self.attn = nn.MultiheadAttention(d_model, num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(d_model, elementwise_affine=False)
        self.fc1 = nn.Linear(d_model, d_mlp)
        self.fc2 = nn.Linear(d_mlp, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(x)
        x = self.dropout(self.attn(h, h, h, need_weights=False)[0])
        return self.dropout(self.fc2(torch.relu(self.fc1(self.norm2(x)))))


class SmallViT(nn.Module):
    """The zoo's vision transformer for ``(N, 1, image, image)`` inputs.

    Args:
        d_model, num_heads, d_mlp, num_blocks: width, heads, MLP width and depth of the encoder.
        patch, image, num_classes: patch size, image size, classes.
        dropout: after attention and MLP.
    """

    def __init__(
        self,
        d_model: int = 16,
        num_heads: int = 2,
        d_mlp: int = 32,
        num_blocks: int = 2,
        patch: int = 4,
        image: int = 8,
        num_classes: int = 10,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if image % patch:
            raise ValueError(f"expected the patch size to divide the image size, got {patch} and {image}")
        self.patch = patch
        self.embed = nn.Linear(patch * patch, d_model)
        self.register_buffer("pos", sinusoidal_positions((image // patch) ** 2, d_model), persistent=False)
        self.blocks = nn.ModuleList(
            SmallViTBlock(d_model, num_heads, d_mlp, dropout) for _ in range(num_blocks)
        )
        self.norm = nn.LayerNorm(d_model, elementwise_affine=False)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        p = self.patch
        tokens = x.unfold(2, p, p).unfold(3, p, p).flatten(1, 3).flatten(2)  # (N, patches, p * p)
        h = self.embed(tokens) + self.pos
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h).mean(1))


def _architecture(config: dict[str, Any]) -> dict[str, int]:
    return {k: config[k] for k in ("d_model", "num_heads", "d_mlp", "num_blocks")}


def train_member(config: dict[str, Any], index: int) -> dict[str, Any]:
    """Train member ``index``; returns its hyperparameters and one record per checkpoint epoch."""
    hp, x_train, y_train, x_test, y_test = member_setup(config, index, GRID)
    n = len(y_train)
    net = SmallViT(**_architecture(config), dropout=hp["dropout"])
    for name, p in net.named_parameters():
        if "bias" in name:
            nn.init.zeros_(p)
        else:
            nn.init.normal_(p, std=hp["init_std"])
    opt_cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop}[
        hp["optimizer"]
    ]
    extra = {"momentum": 0.9} if hp["optimizer"] == "sgd" else {}
    opt = opt_cls(net.parameters(), lr=hp["lr"], weight_decay=hp["l2"], **extra)
    checkpoints = []
    for epoch in range(1, max(config["checkpoints"]) + 1):
        net.train()
        order = torch.cat([torch.randperm(n) for _ in range(math.ceil(MIN_STEPS * 32 / n))])
        for batch in order[: max(n, MIN_STEPS * 32)].split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x_train[batch]), y_train[batch]).backward()
            opt.step()
        if epoch in config["checkpoints"]:
            net.eval()
            state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            finite = bool(all(torch.isfinite(v).all() for v in state.values()))
            nan = float("nan")
            checkpoints.append(
                {
                    "epoch": epoch,
                    "state_dict": state,
                    "finite": finite,
                    "test_accuracy": classification_accuracy(net, x_test, y_test) if finite else nan,
                    "train_accuracy": classification_accuracy(net, x_train, y_train) if finite else nan,
                }
            )
    return {"hparams": hp, "checkpoints": checkpoints}


def build_transformer_zoo(
    out: str | Path,
    n: int = 300,
    d_model: int = 16,
    num_heads: int = 2,
    d_mlp: int | None = None,
    num_blocks: int = 2,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Build (or resume) a zoo of ``n`` :class:`SmallViT` members (``len(CHECKPOINTS)`` entries each)."""
    out = Path(out)
    if not 0 < d_model <= 32 or d_model % num_heads:
        raise ValueError(f"expected 0 < d_model <= 32 divisible by num_heads, got {d_model} and {num_heads}")
    config = {
        "arch": "transformer",
        "d_model": d_model,
        "num_heads": num_heads,
        "d_mlp": d_mlp or 2 * d_model,
        "num_blocks": num_blocks,
        "seed": seed,
        "grid": GRID,
        "checkpoints": list(CHECKPOINTS),
    }
    return build_members(out, config, n, train_member, "zoo transformer", workers, progress)


@dataclass
class TransformerZoo:
    """A loaded zoo: every finite checkpoint as one model of ``weights``.

    ``member[i]`` and ``epoch[i]`` say which run and epoch entry ``i`` is (split by member, so that
    checkpoints of one run never sit on both sides); ``accuracy[i]`` is its test accuracy; ``io[i]`` its
    embedding and classifier weights (:func:`io_weights`), which the attention group leaves alone.
    """

    weights: TransformerWeightSpace
    accuracy: Tensor
    member: Tensor
    epoch: Tensor
    hparams: list[dict[str, Any]]
    config: dict[str, Any]
    io: Tensor

    def __len__(self) -> int:
        return len(self.accuracy)

    def subset(self, index: Tensor) -> TransformerZoo:
        return TransformerZoo(
            self.weights[index],
            self.accuracy[index],
            self.member[index],
            self.epoch[index],
            [self.hparams[i] for i in index.tolist()],
            self.config,
            self.io[index],
        )


IO_PARAMETERS = ("embed.weight", "embed.bias", "head.weight", "head.bias")


def io_weights(model: SmallViT) -> Tensor:
    """The weights outside the encoder blocks of a :class:`SmallViT`, flattened: patch embedding and
    classifier, ``(1, D p^2 + D + K D + K)``. The attention group does not act on them (``D`` is not
    permuted), so every function of them is invariant."""
    params = dict(model.named_parameters())
    return torch.cat([params[name].detach().flatten() for name in IO_PARAMETERS])[None]


def make_template(config: dict[str, Any]) -> SmallViT:
    """An untrained :class:`SmallViT` of the zoo's architecture (the template of its weight space)."""
    return SmallViT(**_architecture(config))


def load_transformer_zoo(path: str | Path) -> TransformerZoo:
    """Load every finite checkpoint of every finished member in ``path``."""
    path = Path(path)
    config_path = path / "config.json"
    if not config_path.exists() or json.loads(config_path.read_text()).get("arch") != "transformer":
        raise ValueError(
            f"expected a transformer zoo directory (built by `python -m nfn_ext.zoo build --arch "
            f"transformer`): {path}"
        )
    config = json.loads(config_path.read_text())
    net = make_template(config)
    spaces, acc, member, epoch, hparams, io = [], [], [], [], [], []
    for p in sorted((path / "members").glob("*.pt")):
        record = torch.load(p, weights_only=True)
        for ckpt in record["checkpoints"]:
            if not ckpt["finite"]:
                continue
            net.load_state_dict(ckpt["state_dict"])
            spaces.append(TransformerWeightSpace.from_module(net))
            io.append(io_weights(net))
            acc.append(ckpt["test_accuracy"])
            member.append(int(p.stem))
            epoch.append(ckpt["epoch"])
            hparams.append(record["hparams"])
    if not spaces:
        raise ValueError(f"zoo {path} has no finished members")
    ws = TransformerWeightSpace.stack(spaces)
    ws.template = make_template(config)
    return TransformerZoo(
        ws, torch.tensor(acc), torch.tensor(member), torch.tensor(epoch), hparams, config, torch.cat(io)
    )


def describe(path: str | Path) -> str:
    zoo = load_transformer_zoo(path)
    acc = zoo.accuracy
    return (
        f"{len(acc)} checkpoints of {len(set(zoo.member.tolist()))} transformers ({zoo.weights.spec}); "
        f"test accuracy min {acc.min():.3f} median {acc.median():.3f} max {acc.max():.3f}"
    )


def is_transformer_zoo(path: str | Path) -> bool:
    config = Path(path) / "config.json"
    return config.exists() and json.loads(config.read_text()).get("arch") == "transformer"
