"""Small transformers of every family that ``TransformerWeightSpace`` reads, with an input and a forward."""

from collections.abc import Callable

import timm
import torch
from torch import Tensor, nn
from transformers import (
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2Model,
    RobertaConfig,
    RobertaModel,
    ViTConfig,
    ViTModel,
)

from nfn_ext.transformer_zoo import SmallViT

D, HEADS, D_MLP, BLOCKS = 16, 2, 24, 2
_TEXT = {
    "hidden_size": D,
    "num_attention_heads": HEADS,
    "intermediate_size": D_MLP,
    "num_hidden_layers": BLOCKS,
}


def _ids(gen: torch.Generator) -> Tensor:
    return torch.randint(0, 30, (2, 5), generator=gen)


def _images(gen: torch.Generator) -> Tensor:
    return torch.rand(2, 1, 8, 8, generator=gen, dtype=torch.float64)


def _tokens(gen: torch.Generator) -> Tensor:
    return torch.randn(2, 5, D, generator=gen, dtype=torch.float64)


def _bert() -> nn.Module:
    return BertModel(BertConfig(vocab_size=30, max_position_embeddings=16, **_TEXT))


def _roberta() -> nn.Module:
    return RobertaModel(RobertaConfig(vocab_size=30, max_position_embeddings=16, **_TEXT))


def _vit() -> nn.Module:
    return ViTModel(ViTConfig(image_size=8, patch_size=4, num_channels=1, **_TEXT))


def _gpt2() -> nn.Module:
    return GPT2Model(
        GPT2Config(vocab_size=30, n_positions=16, n_embd=D, n_head=HEADS, n_inner=D_MLP, n_layer=BLOCKS)
    )


def _timm(qkv_bias: bool = True) -> nn.Module:
    return timm.models.vision_transformer.VisionTransformer(
        img_size=8, patch_size=4, in_chans=1, num_classes=3, embed_dim=D, depth=BLOCKS, num_heads=HEADS,
        mlp_ratio=D_MLP / D, qkv_bias=qkv_bias,
    )  # fmt: skip


def _encoder() -> nn.Module:
    layer = nn.TransformerEncoderLayer(D, HEADS, D_MLP, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, BLOCKS, enable_nested_tensor=False)


def _mha() -> nn.Module:
    return nn.MultiheadAttention(D, HEADS, batch_first=True)


def _small_vit() -> nn.Module:
    return SmallViT(d_model=D, num_heads=HEADS, d_mlp=D_MLP, num_blocks=BLOCKS)


def _hidden(model: nn.Module, x: Tensor) -> Tensor:
    return model(x).last_hidden_state


#: name -> (constructor, input maker, forward returning one tensor)
FAMILIES: dict[str, tuple[Callable[[], nn.Module], Callable[[torch.Generator], Tensor], Callable]] = {
    "bert": (_bert, _ids, _hidden),
    "roberta": (_roberta, _ids, _hidden),
    "vit": (_vit, _images, _hidden),
    "gpt2": (_gpt2, _ids, _hidden),
    "timm": (_timm, _images, lambda m, x: m(x)),
    "timm_no_qkv_bias": (lambda: _timm(False), _images, lambda m, x: m(x)),
    "torch_encoder": (_encoder, _tokens, lambda m, x: m(x)),
    "torch_encoder_layer": (lambda: _encoder().layers[0], _tokens, lambda m, x: m(x)),
    "torch_mha": (_mha, _tokens, lambda m, x: m(x, x, x, need_weights=False)[0]),
    "small_vit": (_small_vit, _images, lambda m, x: m(x)),
}


def make(name: str, seed: int = 0) -> tuple[nn.Module, Tensor, Callable[[nn.Module], Tensor]]:
    """A float64 model in eval mode with O(1) random weights (so attention is far from uniform), its input,
    and ``run(model) -> output``."""
    build, inputs, forward = FAMILIES[name]
    torch.manual_seed(seed)
    model = build().double().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.4)
    x = inputs(gen)
    return model, x, lambda m: forward(m, x)
