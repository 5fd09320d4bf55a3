"""Accuracy prediction for transformers: :class:`AccuracyPredictor` and the training loop it shares with
the benchmark (``python -m nfn_ext.transformer_train`` is the command line)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from scipy.stats import kendalltau
from torch import Tensor, nn
from tqdm.auto import tqdm

from .transformer_nfn import TransformerNFN
from .transformer_space import TransformerWeightSpace, TransformerWeightSpaceSpec
from .transformer_zoo import TransformerZoo, load_transformer_zoo


def kendall_tau(pred: Tensor, target: Tensor) -> float:
    return float(kendalltau(pred.double().numpy(), target.double().numpy()).statistic)


#: what the models take: a weight space, or a weight space and the weights the group leaves alone
Inputs = TransformerWeightSpace | tuple[TransformerWeightSpace, Tensor]


def _take(x: Inputs, index: Tensor | slice) -> Inputs:
    return (x[0][index], x[1][index]) if isinstance(x, tuple) else x[index]


def _call(model: nn.Module, x: Inputs) -> Tensor:
    return (model(*x) if isinstance(x, tuple) else model(x)).squeeze(-1)


@torch.no_grad()
def predict_logits(model: nn.Module, x: Inputs, batch_size: int = 256) -> Tensor:
    """``model`` on ``x`` (a weight space, or ``(weight space, io weights)``) in batches: ``(B,)``."""
    model.eval()
    n = len(x[0]) if isinstance(x, tuple) else len(x)
    return torch.cat([_call(model, _take(x, slice(i, i + batch_size))) for i in range(0, n, batch_size)])


def fit(
    model: nn.Module,
    ws: Inputs,
    accuracy: Tensor,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    val: tuple[Inputs, Tensor] | None = None,
    progress: bool = True,
) -> list[float]:
    """Adam on binary cross-entropy between ``sigmoid(model(ws))`` and ``accuracy``, cosine learning rate.
    ``ws`` may be a pair ``(weight space, io weights)``, passed to the model as two arguments.

    Batches are drawn from a generator seeded by ``seed`` (the same order for every model: paired runs).
    With ``val``, the weights of the epoch with the best validation Kendall's tau are restored at the end
    (early stopping). Returns Kendall's tau on ``val`` after every epoch (empty without ``val``).
    """
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(epochs, 1))
    gen = torch.Generator().manual_seed(seed)
    curve: list[float] = []
    bar = tqdm(range(epochs), desc=type(model).__name__, disable=not progress)
    for _ in bar:
        model.train()
        for batch in torch.randperm(len(accuracy), generator=gen).split(batch_size):
            opt.zero_grad()
            logits = _call(model, _take(ws, batch))
            loss = nn.functional.binary_cross_entropy_with_logits(logits, accuracy[batch].to(logits.dtype))
            loss.backward()
            opt.step()
        sched.step()
        if val is not None:
            curve.append(kendall_tau(predict_logits(model, val[0]), val[1]))
            bar.set_postfix(loss=f"{loss.item():.4f}", val_tau=f"{curve[-1]:.3f}")
            if curve[-1] >= max(curve):
                best = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if val is not None:
        model.load_state_dict(best)
    return curve


class AccuracyPredictor(nn.Module):
    """Predicts the test accuracy of transformers from their attention and MLP weights (Transformer-NFN).

    Args:
        spec: shape of the blocks it scores (the zoo's ``weights.spec``).
        hidden_channels, head_hidden, attention_to_mlp: as in :class:`~nfn_ext.TransformerNFN`; the
            default leaves the attention -> MLP terms out, which the benchmark's validation split chose on
            the SmallViT zoo in every seed.
    """

    def __init__(
        self,
        spec: TransformerWeightSpaceSpec,
        hidden_channels: Sequence[int] = (8,),
        head_hidden: int = 64,
        attention_to_mlp: bool = False,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.config = {
            "hidden_channels": list(hidden_channels),
            "head_hidden": head_hidden,
            "attention_to_mlp": attention_to_mlp,
        }
        self.nfn = TransformerNFN(spec, hidden_channels, head_hidden, attention_to_mlp=attention_to_mlp)

    def forward(self, ws: TransformerWeightSpace) -> Tensor:
        """Predicted accuracies ``(B,)`` in ``[0, 1]``."""
        return torch.sigmoid(self.nfn(ws).squeeze(-1))

    @torch.no_grad()
    def predict(self, models: Sequence[nn.Module] | TransformerWeightSpace) -> Tensor:
        """Predicted accuracies of HF / timm / torch models (or a weight space) of the trained shape."""
        ws = (
            models
            if isinstance(models, TransformerWeightSpace)
            else TransformerWeightSpace.from_modules(models)
        )
        if ws.spec != self.spec:
            raise ValueError(f"this predictor scores transformers of shape {self.spec}, got {ws.spec}")
        self.eval()
        dtype = next(self.parameters()).dtype
        return self(ws.to(dtype))

    @classmethod
    def fit(
        cls,
        zoo: TransformerZoo | str | Path,
        epochs: int = 10,
        batch_size: int = 32,
        lr: float = 1e-3,
        seed: int = 0,
        val_fraction: float = 0.1,
        progress: bool = True,
        **kwargs: Any,
    ) -> AccuracyPredictor:
        """Train on a zoo (from :func:`~nfn_ext.transformer_zoo.load_transformer_zoo`).

        ``val_fraction`` of its members (all their checkpoints) are held out for early stopping on Kendall's
        tau; ``0`` trains on everything for ``epochs`` epochs.
        """
        zoo = load_transformer_zoo(zoo) if isinstance(zoo, str | Path) else zoo
        torch.manual_seed(seed)
        predictor = cls(zoo.weights.spec, **kwargs)
        members = torch.unique(zoo.member)
        n_val = int(val_fraction * len(members))
        train, val = zoo, None
        if n_val >= 2:
            order = torch.randperm(len(members), generator=torch.Generator().manual_seed(seed))
            held = members[order[:n_val]]
            is_val = torch.isin(zoo.member, held)
            train = zoo.subset(torch.nonzero(~is_val).squeeze(1))
            held_out = zoo.subset(torch.nonzero(is_val).squeeze(1))
            val = (held_out.weights, held_out.accuracy)
        fit(predictor.nfn, train.weights, train.accuracy, epochs, batch_size, lr, seed, val, progress)
        return predictor.eval()

    def save(self, path: str | Path) -> None:
        torch.save({"spec": asdict(self.spec), "config": self.config, "state_dict": self.state_dict()}, path)

    @classmethod
    def load(cls, path: str | Path) -> AccuracyPredictor:
        saved = torch.load(path, weights_only=True)
        predictor = cls(TransformerWeightSpaceSpec(**saved["spec"]), **saved["config"])
        predictor.load_state_dict(saved["state_dict"])
        return predictor.eval()
