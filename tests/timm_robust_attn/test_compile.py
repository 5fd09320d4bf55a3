"""torch.compile of robust-attention ViTs: compiled forward and gradients equal eager ones."""

import pytest
import timm
import torch

import timm_robust_attn  # noqa: F401  (registers the attention layers)


@pytest.mark.parametrize("attn", ["kde", "rkde"])
def test_compiled_vit_matches_eager_forward_and_gradients(attn):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", depth=2, num_classes=10, attn_layer=attn, img_size=32,
                              patch_size=8)
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, backend="aot_eager")
    out = compiled(x)
    torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-5)
    out.square().sum().backward()
    compiled_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x).square().sum().backward()
    for got, expected in zip(compiled_grads, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
