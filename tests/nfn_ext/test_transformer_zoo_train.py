"""The SmallViT zoo, the transformer baselines and AccuracyPredictor on models of several families."""

import importlib

import numpy as np
import pytest
import timm
import torch
from torch import nn
from transformers import ViTConfig, ViTModel

from nfn_ext import AccuracyPredictor, TransformerWeightSpace, random_group_element
from nfn_ext.transformer_baselines import TransformerFlatMLP, TransformerPermutationNFN, weight_statistics
from nfn_ext.transformer_group import AttentionGroupElement
from nfn_ext.transformer_zoo import IO_PARAMETERS, SmallViT, build_transformer_zoo, load_transformer_zoo
from nfn_ext.zoo import main as zoo_main
from tests.nfn_ext.transformer_models import make


def test_small_vit_has_the_zoo_design():
    net = SmallViT()
    assert net(torch.rand(5, 1, 8, 8)).shape == (5, 10)
    for block in net.blocks:
        assert block.attn.num_heads == 2 and block.attn.embed_dim <= 32
        assert not block.norm1.elementwise_affine and not block.norm2.elementwise_affine
    # no residual: a block's output depends on its input only through LayerNorm(x), so it is scale-invariant
    x = torch.randn(2, 4, 16)
    assert torch.allclose(net.blocks[0](x), net.blocks[0](3.0 * x), atol=1e-5)


def test_zoo_builds_resumes_and_loads(tiny_zoo):
    zoo = load_transformer_zoo(tiny_zoo)
    assert len(zoo) <= 12 and set(zoo.member.tolist()) <= {0, 1, 2}
    assert set(zoo.epoch.tolist()) <= {1, 2, 4, 8}
    assert ((zoo.accuracy >= 0) & (zoo.accuracy <= 1)).all()
    assert zoo.weights.spec.num_heads == 2 and zoo.weights.spec.d_model == 16
    # io: the embedding and classifier of every checkpoint, in the order of IO_PARAMETERS
    ckpts = torch.load(tiny_zoo / "members" / "00000.pt", weights_only=True)["checkpoints"]
    record = next(c for c in ckpts if c["finite"])["state_dict"]
    first = torch.cat([record[k].flatten() for k in IO_PARAMETERS])
    assert zoo.io.shape == (len(zoo), 16 * 16 + 16 + 10 * 16 + 10) and torch.equal(zoo.io[0], first)
    assert torch.equal(zoo.subset(torch.tensor([1, 0])).io, zoo.io[[1, 0]])
    stamp = (tiny_zoo / "members" / "00000.pt").stat().st_mtime_ns
    build_transformer_zoo(tiny_zoo, n=3, progress=False)  # nothing left to do
    assert (tiny_zoo / "members" / "00000.pt").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="holds a zoo built with"):
        build_transformer_zoo(tiny_zoo, n=3, d_model=8, progress=False)
    with pytest.raises(ValueError, match="d_model <= 32"):
        build_transformer_zoo(tiny_zoo.parent / "big", d_model=64)


def test_zoo_cli_builds_transformers(tiny_zoo, capsys):
    zoo_main(["build", "--arch", "transformer", "--n", "3", "--out", str(tiny_zoo)])
    zoo_main(["info", "--zoo", str(tiny_zoo)])
    out = capsys.readouterr().out
    assert out.count("checkpoints of 3 transformers") == 2


def _timm_vit() -> nn.Module:
    return timm.models.vision_transformer.VisionTransformer(
        img_size=8, patch_size=4, in_chans=1, num_classes=10, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2
    )


def test_accuracy_predictor_scores_models_of_every_family(tiny_zoo, tmp_path):
    torch.manual_seed(0)
    predictor = AccuracyPredictor.fit(tiny_zoo, epochs=2, progress=False)
    zoo_model = SmallViT()
    hf = ViTModel(ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_attention_heads=2,
                            intermediate_size=32, num_hidden_layers=2))  # fmt: skip
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2,
                                    enable_nested_tensor=False)  # fmt: skip
    models = [zoo_model, _timm_vit(), hf, encoder]
    pred = predictor.predict(models)
    assert pred.shape == (4,) and ((pred > 0) & (pred < 1)).all()
    # the same weights in another family's model get the same score
    ws = TransformerWeightSpace.from_module(zoo_model)
    as_timm = ws.to_module(template=_timm_vit())
    assert torch.allclose(predictor.predict([as_timm]), pred[:1], atol=1e-6)
    # a group element does not change the score
    g = random_group_element(ws, scale_range=1e2, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(predictor.predict([g.act(ws).to_module()]), pred[:1], atol=1e-5)
    path = tmp_path / "predictor.pt"
    predictor.save(path)
    assert torch.equal(AccuracyPredictor.load(path).predict(models), pred)
    with pytest.raises(ValueError, match="scores transformers of shape"):
        predictor.predict([make("torch_mha")[0]])
    # early stopping on held-out members
    stopped = AccuracyPredictor.fit(tiny_zoo, epochs=2, val_fraction=0.7, progress=False)
    assert stopped.predict(models).shape == (4,)


def _pure_permutation(ws: TransformerWeightSpace) -> AttentionGroupElement:
    g = random_group_element(ws, generator=torch.Generator().manual_seed(0))
    eye_qk = torch.eye(ws.spec.d_qk, dtype=torch.float64).expand_as(g.qk)
    eye_vo = torch.eye(ws.spec.d_v, dtype=torch.float64).expand_as(g.vo)
    return AttentionGroupElement(g.head_perm, eye_qk, eye_vo, g.mlp_perm)


def test_permutation_baseline_is_invariant_to_permutations_only():
    ws = TransformerWeightSpace.from_modules([make("small_vit", seed=s)[0] for s in range(3)])
    net = TransformerPermutationNFN(ws.spec).double()
    out = net(ws)
    assert torch.allclose(net(_pure_permutation(ws).act(ws)), out, atol=1e-10)
    g = random_group_element(ws, scale_range=10.0, generator=torch.Generator().manual_seed(0))
    assert (net(g.act(ws)) - out).abs().max() > 1e-3
    assert TransformerFlatMLP(ws.spec).double()(ws).shape == (3, 1)
    io = torch.randn(3, 5, dtype=torch.float64)
    for cls in (TransformerFlatMLP, TransformerPermutationNFN):
        baseline = cls(ws.spec, io_features=5).double()
        assert (baseline(ws, io) - baseline(ws, io.flip(0))).abs().max() > 0
        with pytest.raises(ValueError, match="io weights"):
            baseline(ws)


def test_weight_statistics_match_numpy():
    ws = TransformerWeightSpace.from_modules([make("bert")[0]])
    stats = weight_statistics(ws).reshape(2, 12, 7)  # blocks x fields x stats
    wk = ws.wk[0, 0, 1].numpy().ravel()  # field 2, block 1
    expected = [wk.mean(), wk.var(), *np.quantile(wk, [0, 0.25, 0.5, 0.75, 1])]
    assert np.allclose(stats[1, 2].numpy(), expected)


@pytest.mark.parametrize("module", ["nfn_ext.transformer_train", "benchmarks.nfn_ext_transformer_tau"])
def test_scripts_have_help(module, capsys):
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(module).main(["--help"])
    assert exit_info.value.code == 0
    assert "--zoo" in capsys.readouterr().out or module.startswith("benchmarks")


def test_zoo_builds_with_workers(tmp_path):
    out = build_transformer_zoo(tmp_path / "vit", n=2, workers=2, progress=False)
    assert sorted(p.name for p in (out / "members").glob("*.pt")) == ["00000.pt", "00001.pt"]
