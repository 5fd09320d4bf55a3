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
from .transformer_zoo import SmallViT, TransformerZoo, io_weights, load_transformer_zoo


def kendall_tau(pred: Tensor, target: Tensor) -> float:
    return float(kendalltau(pred.double().numpy(), target.double().numpy()).statistic)


#: what the models take: a weight space, or a weight space and the weights the group leaves alone
Inputs = TransformerWeightSpace | tuple[TransformerWeightSpace, Tensor]


def _take(x: Inputs, index: Tensor | slice) -> Inputs:
    return (x[0][index], x[1][index]) if isinstance(x, tuple) else x[index]


def _call(model: nn.Module, x: Inputs) -> Tensor:
    return (model(*x) if isinstance(x, tuple) else model(x)).squeeze(-1)


#: training losses of :func:`fit`
LOSSES = ("bce", "rank", "bce+rank")


def pairwise_logistic_loss(scores: Tensor, target: Tensor) -> Tensor:
    r"""Pairwise logistic ranking loss (RankNet) within a batch, a smooth surrogate of Kendall's tau:

    .. math:: \frac{1}{|P|} \sum_{(i, j) \in P} \log(1 + e^{-(s_i - s_j)}),
              \quad P = \{(i, j) : y_i > y_j\}

    ``scores``, ``target``: ``(B,)``. Pairs with equal targets do not count; ``0`` when no pair differs.
    """
    above = target[:, None] > target[None, :]
    if not above.any():
        return scores.sum() * 0.0
    return nn.functional.softplus(scores[None, :] - scores[:, None])[above].mean()


def training_loss(logits: Tensor, accuracy: Tensor, loss: str = "bce") -> Tensor:
    """``bce``: binary cross-entropy of ``sigmoid(logits)`` against ``accuracy``; ``rank``:
    :func:`pairwise_logistic_loss`; ``bce+rank``: their sum."""
    if loss not in LOSSES:
        raise ValueError(f"expected loss in {LOSSES}, got {loss!r}")
    accuracy = accuracy.to(logits.dtype)
    total = logits.new_zeros(())
    if loss in ("bce", "bce+rank"):
        total = total + nn.functional.binary_cross_entropy_with_logits(logits, accuracy)
    if loss in ("rank", "bce+rank"):
        total = total + pairwise_logistic_loss(logits, accuracy)
    return total


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
    loss: str = "bce",
    weight_decay: float = 0.0,
    snapshots: list[dict[str, Tensor]] | None = None,
) -> list[float]:
    """Adam (L2 ``weight_decay``) on :func:`training_loss` of ``model(ws)`` against ``accuracy`` (``loss``:
    one of :data:`LOSSES`), cosine learning rate. ``ws`` may be a pair ``(weight space, io weights)``,
    passed to the model as two arguments.

    Batches are drawn from a generator seeded by ``seed`` (the same order for every model: paired runs).
    With ``val``, the weights of the epoch with the best validation Kendall's tau are restored at the end
    (early stopping). With ``snapshots``, a copy of the weights after every epoch is appended to it (for
    :func:`snapshot_logits`). A model with a ``fit_feature_norm`` method (:class:`TransformerNFN` with
    ``raw_features``) has it fitted on ``ws`` first. Returns Kendall's tau on ``val`` after every epoch
    (empty without ``val``).
    """
    if loss not in LOSSES:
        raise ValueError(f"expected loss in {LOSSES}, got {loss!r}")
    if hasattr(model, "fit_feature_norm"):
        model.fit_feature_norm(*(ws if isinstance(ws, tuple) else (ws,)))
    batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(epochs, 1))
    gen = torch.Generator().manual_seed(seed)
    curve: list[float] = []
    bar = tqdm(range(epochs), desc=type(model).__name__, disable=not progress)
    for _ in bar:
        model.train()
        for batch in torch.randperm(len(accuracy), generator=gen).split(batch_size):
            if batch_norm and len(batch) == 1 and len(accuracy) > 1:  # a BatchNorm cannot train on one model
                continue
            opt.zero_grad()
            value = training_loss(_call(model, _take(ws, batch)), accuracy[batch], loss)
            value.backward()
            opt.step()
        sched.step()
        if snapshots is not None:
            snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        if val is not None:
            curve.append(kendall_tau(predict_logits(model, val[0]), val[1]))
            bar.set_postfix(loss=f"{value.item():.4f}", val_tau=f"{curve[-1]:.3f}")
            if curve[-1] >= max(curve):
                best = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if val is not None:
        model.load_state_dict(best)
    return curve


def snapshot_logits(model: nn.Module, states: Sequence[dict[str, Tensor]], x: Inputs) -> Tensor:
    """Snapshot ensemble: the mean of :func:`predict_logits` over the weights ``states`` (e.g. several
    epochs of one run, from :func:`fit`'s ``snapshots``) ``(B,)``; ``model`` ends with its own weights."""
    own = {k: v.detach().clone() for k, v in model.state_dict().items()}
    logits = []
    for state in states:
        model.load_state_dict(state)
        logits.append(predict_logits(model, x))
    model.load_state_dict(own)
    return torch.stack(logits).mean(0)


class AccuracyPredictor(nn.Module):
    """Predicts the test accuracy of transformers from their attention and MLP weights (Transformer-NFN).

    Args:
        spec: shape of the blocks it scores (the zoo's ``weights.spec``).
        hidden_channels, head_hidden, attention_to_mlp: as in :class:`~nfn_ext.TransformerNFN`; the
            default leaves the attention -> MLP terms out, which the benchmark's validation split chose on
            the SmallViT zoo in every seed.
        io_features: ``0`` (default) scores any family from its blocks only; the size of the zoo's
            embedding and classifier weights (``zoo.io.shape[1]``) also reads those
            (:func:`~nfn_ext.transformer_zoo.io_weights`), which exist for the zoo's :class:`SmallViT` only.
        raw_features: as in :class:`~nfn_ext.TransformerNFN`: the head also reads the invariant pool of the
            input weights through a :class:`~nfn_ext.transformer_nfn.QuantileNorm` that :meth:`fit` fits on
            the training models.
    """

    def __init__(
        self,
        spec: TransformerWeightSpaceSpec,
        hidden_channels: Sequence[int] = (8,),
        head_hidden: int = 64,
        attention_to_mlp: bool = False,
        io_features: int = 0,
        raw_features: bool = True,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.config = {
            "hidden_channels": list(hidden_channels),
            "head_hidden": head_hidden,
            "attention_to_mlp": attention_to_mlp,
            "io_features": io_features,
            "raw_features": raw_features,
        }
        self.nfn = TransformerNFN(
            spec, hidden_channels, head_hidden, attention_to_mlp=attention_to_mlp, io_features=io_features,
            raw_features=raw_features,
        )  # fmt: skip

    def forward(self, ws: TransformerWeightSpace, io: Tensor | None = None) -> Tensor:
        """Predicted accuracies ``(B,)`` in ``[0, 1]`` (``io`` ``(B, io_features)`` when built with it)."""
        return torch.sigmoid(self.nfn(ws, io).squeeze(-1))

    @torch.no_grad()
    def predict(
        self, models: Sequence[nn.Module] | TransformerWeightSpace, io: Tensor | None = None
    ) -> Tensor:
        """Predicted accuracies of HF / timm / torch models (or a weight space) of the trained shape. With
        ``io_features``, ``models`` must be :class:`SmallViT` (their embedding and classifier are read), or a
        weight space with its ``io`` ``(B, io_features)``."""
        if isinstance(models, TransformerWeightSpace):
            ws = models
        else:
            ws = TransformerWeightSpace.from_modules(models)
            if self.config["io_features"]:
                others = sorted({type(m).__name__ for m in models if not isinstance(m, SmallViT)})
                if others:
                    raise ValueError(
                        "this predictor reads the embedding and classifier of the zoo's SmallViT "
                        f"(io_features={self.config['io_features']}), got {others}; fit it without io to "
                        "score other families"
                    )
                io = torch.cat([io_weights(m) for m in models])
        if ws.spec != self.spec:
            raise ValueError(f"this predictor scores transformers of shape {self.spec}, got {ws.spec}")
        self.eval()
        dtype = next(self.parameters()).dtype
        return self(ws.to(dtype), None if io is None else io.to(dtype))

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
        io: bool = False,
        loss: str = "bce",
        weight_decay: float = 0.0,
        **kwargs: Any,
    ) -> AccuracyPredictor:
        """Train on a zoo (from :func:`~nfn_ext.transformer_zoo.load_transformer_zoo`) with :func:`fit`.

        ``val_fraction`` of its members (all their checkpoints) are held out for early stopping on Kendall's
        tau; ``0`` trains on everything for ``epochs`` epochs. The feature normalisation of ``raw_features``
        is fitted on the training models (by :func:`fit`). ``io=True`` also reads the zoo's embedding
        and classifier weights (the predictor then scores the zoo's :class:`SmallViT` only).
        """
        zoo = load_transformer_zoo(zoo) if isinstance(zoo, str | Path) else zoo
        torch.manual_seed(seed)
        predictor = cls(zoo.weights.spec, io_features=zoo.io.shape[1] if io else 0, **kwargs)

        def inputs(part: TransformerZoo) -> Inputs:
            return (part.weights, part.io) if io else part.weights

        members = torch.unique(zoo.member)
        n_val = int(val_fraction * len(members))
        train, val = zoo, None
        if n_val >= 2:
            order = torch.randperm(len(members), generator=torch.Generator().manual_seed(seed))
            held = members[order[:n_val]]
            is_val = torch.isin(zoo.member, held)
            train = zoo.subset(torch.nonzero(~is_val).squeeze(1))
            held_out = zoo.subset(torch.nonzero(is_val).squeeze(1))
            val = (inputs(held_out), held_out.accuracy)
        fit(
            predictor.nfn, inputs(train), train.accuracy, epochs, batch_size, lr, seed, val, progress,
            loss=loss, weight_decay=weight_decay,
        )  # fmt: skip
        return predictor.eval()

    def save(self, path: str | Path) -> None:
        torch.save({"spec": asdict(self.spec), "config": self.config, "state_dict": self.state_dict()}, path)

    @classmethod
    def load(cls, path: str | Path) -> AccuracyPredictor:
        saved = torch.load(path, weights_only=True)
        predictor = cls(TransformerWeightSpaceSpec(**saved["spec"]), **saved["config"])
        predictor.load_state_dict(saved["state_dict"])
        return predictor.eval()
