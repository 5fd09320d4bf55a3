"""Training options of the transformer accuracy predictor: the pairwise ranking loss, snapshot ensembles,
and AccuracyPredictor reading the embedding and classifier weights (io)."""

import itertools
import math

import pytest
import timm
import torch
from torch import nn

from nfn_ext import AccuracyPredictor, TransformerWeightSpace, random_group_element
from nfn_ext.transformer_predictor import (
    fit,
    pairwise_logistic_loss,
    predict_logits,
    snapshot_logits,
    training_loss,
)
from nfn_ext.transformer_zoo import SmallViT, io_weights, load_transformer_zoo


def test_pairwise_logistic_loss_matches_a_direct_evaluation():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(7, generator=gen, dtype=torch.float64)
    target = torch.tensor([0.1, 0.5, 0.5, 0.9, 0.2, 0.1, 0.7], dtype=torch.float64)  # with ties
    pairs = [(i, j) for i, j in itertools.product(range(7), repeat=2) if target[i] > target[j]]
    direct = sum(math.log1p(math.exp(-(scores[i] - scores[j]).item())) for i, j in pairs) / len(pairs)
    assert pairwise_logistic_loss(scores, target).item() == pytest.approx(direct, rel=1e-12)
    # ordered like the target: smaller than reversed; scale-free in the target (a ranking loss)
    ordered = pairwise_logistic_loss(10 * target, target)
    assert ordered < pairwise_logistic_loss(-10 * target, target)
    assert torch.equal(pairwise_logistic_loss(scores, target), pairwise_logistic_loss(scores, target**3))
    # no pair differs: zero, and still differentiable
    flat = scores.clone().requires_grad_()
    loss = pairwise_logistic_loss(flat, torch.full((7,), 0.3, dtype=torch.float64))
    loss.backward()
    assert loss.item() == 0 and torch.equal(flat.grad, torch.zeros(7, dtype=torch.float64))


def test_training_loss_mixes_bce_and_ranking():
    logits, acc = torch.randn(9, generator=torch.Generator().manual_seed(1)), torch.rand(9)
    bce = nn.functional.binary_cross_entropy_with_logits(logits, acc)
    assert torch.equal(training_loss(logits, acc, "bce"), bce)
    assert torch.allclose(training_loss(logits, acc, "rank"), pairwise_logistic_loss(logits, acc))
    assert torch.allclose(training_loss(logits, acc, "bce+rank"), bce + pairwise_logistic_loss(logits, acc))
    with pytest.raises(ValueError, match="expected loss in"):
        training_loss(logits, acc, "mse")


def _toy(n: int = 40):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 5, generator=gen)
    return x, torch.sigmoid(x[:, 0] - x[:, 1])


def test_fit_snapshots_and_their_ensemble():
    x, acc = _toy()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 1))
    states: list = []
    curve = fit(net, x, acc, 6, 8, 1e-2, 0, (x[:20], acc[:20]), False, loss="bce+rank", snapshots=states)
    assert len(curve) == len(states) == 6
    best = max(i for i, tau in enumerate(curve) if tau == max(curve))
    assert all(torch.equal(v, states[best][k]) for k, v in net.state_dict().items())  # early stopping
    assert not torch.equal(states[0]["0.weight"], states[-1]["0.weight"])
    own = {k: v.clone() for k, v in net.state_dict().items()}
    ens = snapshot_logits(net, [states[1], states[4]], x)
    direct = []
    for state in (states[1], states[4]):
        copy = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 1))
        copy.load_state_dict(state)
        direct.append(copy(x).squeeze(-1).detach())
    assert torch.allclose(ens, (direct[0] + direct[1]) / 2)
    assert all(torch.equal(v, own[k]) for k, v in net.state_dict().items())  # weights restored
    assert torch.allclose(snapshot_logits(net, [own], x), predict_logits(net, x))
    with pytest.raises(ValueError, match="expected loss in"):
        fit(net, x, acc, 1, 8, loss="hinge", progress=False)


def test_ranking_loss_learns_an_order_with_weight_decay():
    x, acc = _toy(200)
    torch.manual_seed(0)
    net = nn.Linear(5, 1)
    before = net.weight.detach().clone()
    curve = fit(net, x, acc, 15, 16, 3e-2, 0, (x, acc), False, loss="rank", weight_decay=1e-3)
    assert curve[-1] > 0.8 and not torch.equal(before, net.weight)


def _timm_vit() -> nn.Module:
    return timm.models.vision_transformer.VisionTransformer(
        img_size=8, patch_size=4, in_chans=1, num_classes=10, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2
    )


def test_accuracy_predictor_reads_embedding_and_classifier(tiny_zoo, tmp_path):
    zoo = load_transformer_zoo(tiny_zoo)
    predictor = AccuracyPredictor.fit(tiny_zoo, epochs=2, progress=False, io=True, loss="bce+rank")
    assert predictor.config["io_features"] == zoo.io.shape[1] == predictor.nfn.io_features
    torch.manual_seed(0)
    models = [SmallViT(), SmallViT()]
    pred = predictor.predict(models)
    assert pred.shape == (2,) and ((pred > 0) & (pred < 1)).all()
    # the same as the weight space with the io weights given explicitly
    ws = TransformerWeightSpace.from_modules(models)
    io = torch.cat([io_weights(m) for m in models])
    assert torch.allclose(predictor.predict(ws, io), pred)
    # the embedding and classifier change the score; a group element on the blocks does not
    changed = SmallViT()
    changed.load_state_dict(models[0].state_dict())
    with torch.no_grad():
        changed.head.weight.mul_(3.0)
    assert not torch.allclose(predictor.predict([changed]), pred[:1])
    g = random_group_element(ws, scale_range=1e2, generator=torch.Generator().manual_seed(0))
    moved = g.act(ws).to_module(index=0)
    assert torch.allclose(predictor.predict([moved]), pred[:1], atol=1e-5)
    path = tmp_path / "predictor.pt"
    predictor.save(path)
    assert torch.equal(AccuracyPredictor.load(path).predict(models), pred)
    with pytest.raises(ValueError, match="embedding and classifier of the zoo's SmallViT"):
        predictor.predict([_timm_vit()])
    with pytest.raises(ValueError, match="io"):
        predictor.predict(ws)  # a weight space without its io
