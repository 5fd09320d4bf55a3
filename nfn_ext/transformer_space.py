r"""Weight spaces of transformer encoders: per-head attention weights and the MLP of every block.

A block of a model with ``H`` heads, width ``D``, head widths ``D_k`` (query/key) and ``D_v`` (value) and MLP
width ``D_A`` computes, for tokens ``X`` of shape ``(n, D)`` (row vectors),

.. math::
    \mathrm{head}_h(X) = \mathrm{softmax}\Big(\frac{(X W_Q^h + b_Q^h)(X W_K^h + b_K^h)^\top}{\sqrt{D_k}}\Big)
    (X W_V^h + b_V^h), \qquad
    \mathrm{Attn}(X) = \sum_h \mathrm{head}_h(X) W_O^h + b_O,

    \mathrm{MLP}(X) = \sigma(X W_A + b_A) W_B + b_B.

:class:`TransformerWeightSpace` stores the ``B`` models of a batch with ``C`` feature channels and the ``L``
blocks stacked, in these orientations (the ``nfn`` layout, with a block and a head axis):

=========  ==========================  =========  ==========================
``wq``     ``(B, C, L, H, D, D_k)``    ``bq``     ``(B, C, L, H, D_k)``
``wk``     ``(B, C, L, H, D, D_k)``    ``bk``     ``(B, C, L, H, D_k)``
``wv``     ``(B, C, L, H, D, D_v)``    ``bv``     ``(B, C, L, H, D_v)``
``wo``     ``(B, C, L, H, D_v, D)``    ``bo``     ``(B, C, L, D)``
``wa``     ``(B, C, L, D, D_A)``       ``ba``     ``(B, C, L, D_A)``
``wb``     ``(B, C, L, D_A, D)``       ``bb``     ``(B, C, L, D)``
=========  ==========================  =========  ==========================

Readers exist for Hugging Face ``BertModel``, ``RobertaModel``, ``ViTModel`` and ``GPT2Model`` (whose fused
``c_attn`` :class:`~transformers.pytorch_utils.Conv1D` holds ``[W_Q | W_K | W_V]`` as ``x @ W``), timm
``VisionTransformer`` (fused ``qkv``), torch ``nn.TransformerEncoder`` / ``nn.TransformerEncoderLayer`` /
``nn.MultiheadAttention`` (fused ``in_proj_weight``; a bare attention layer has no MLP, ``D_A = 0``) and the
zoo's :class:`~nfn_ext.transformer_zoo.SmallViT`. A missing bias reads as zeros. Everything outside the
blocks (embeddings, LayerNorms, heads) is not part of the weight space;
:meth:`TransformerWeightSpace.to_module` takes it from the source model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

#: Names of the tensors of a :class:`TransformerWeightSpace`, in storage order.
FIELDS = ("wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo", "wa", "ba", "wb", "bb")


@dataclass(frozen=True)
class TransformerWeightSpaceSpec:
    """Shape of a transformer weight space: blocks, heads and widths (uniform over blocks)."""

    num_blocks: int
    num_heads: int
    d_model: int
    d_qk: int
    d_v: int
    d_mlp: int

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-model shape (after ``(B, C)``) of every tensor in :data:`FIELDS`."""
        L, H, D, K, V, A = self.num_blocks, self.num_heads, self.d_model, self.d_qk, self.d_v, self.d_mlp
        return {
            "wq": (L, H, D, K), "bq": (L, H, K), "wk": (L, H, D, K), "bk": (L, H, K),
            "wv": (L, H, D, V), "bv": (L, H, V), "wo": (L, H, V, D), "bo": (L, D),
            "wa": (L, D, A), "ba": (L, A), "wb": (L, A, D), "bb": (L, D),
        }  # fmt: skip

    @property
    def num_params(self) -> int:
        total = 0
        for shape in self.shapes().values():
            n = 1
            for s in shape:
                n *= s
            total += n
        return total


@dataclass
class _Family:
    """How to find the blocks of one model family and read/write the canonical per-block tensors."""

    name: str
    matches: Callable[[nn.Module], bool]
    blocks: Callable[[nn.Module], list[nn.Module]]
    heads: Callable[[nn.Module], int]
    read: Callable[[nn.Module, int], dict[str, Tensor]]
    write: Callable[[nn.Module, dict[str, Tensor], int], None]


# ---- conversions between fused projections and per-head tensors (H heads) ----------------------------------
def _in_heads(weight: Tensor, heads: int) -> Tensor:
    """``nn.Linear`` weight ``(H * d, D)`` -> per-head ``(H, D, d)`` with ``x W_h`` = head ``h``'s slice."""
    return weight.reshape(heads, -1, weight.shape[-1]).transpose(1, 2)


def _in_heads_back(w: Tensor) -> Tensor:
    return w.transpose(1, 2).reshape(-1, w.shape[1])


def _out_heads(weight: Tensor, heads: int) -> Tensor:
    """Output ``nn.Linear`` weight ``(D, H * d)`` -> per-head ``(H, d, D)``."""
    return weight.reshape(weight.shape[0], heads, -1).permute(1, 2, 0)


def _out_heads_back(w: Tensor) -> Tensor:
    return w.permute(2, 0, 1).reshape(w.shape[2], -1)


def _bias(linear: nn.Module, n: int, like: Tensor) -> Tensor:
    bias = getattr(linear, "bias", None)
    return torch.zeros(n, dtype=like.dtype, device=like.device) if bias is None else bias.detach()


def _set(param: Tensor | None, value: Tensor, what: str) -> None:
    """Copy ``value`` into ``param``; a module without that bias only accepts zeros."""
    if param is None:
        if value.abs().max().item() > 0:
            raise ValueError(f"the target module has no {what}, but the weight space holds a nonzero one")
        return
    with torch.no_grad():
        param.copy_(value.reshape(param.shape).to(param.dtype))


def _read_linears(q: nn.Module, k: nn.Module, v: nn.Module, o: nn.Module, heads: int) -> dict[str, Tensor]:
    """Separate ``nn.Linear`` projections (HF BERT/RoBERTa/ViT)."""
    wq = q.weight.detach()
    return {
        "wq": _in_heads(wq, heads), "bq": _bias(q, wq.shape[0], wq).reshape(heads, -1),
        "wk": _in_heads(k.weight.detach(), heads), "bk": _bias(k, k.weight.shape[0], wq).reshape(heads, -1),
        "wv": _in_heads(v.weight.detach(), heads), "bv": _bias(v, v.weight.shape[0], wq).reshape(heads, -1),
        "wo": _out_heads(o.weight.detach(), heads), "bo": _bias(o, o.weight.shape[0], wq),
    }  # fmt: skip


def _write_linears(q: nn.Module, k: nn.Module, v: nn.Module, o: nn.Module, t: dict[str, Tensor]) -> None:
    for name, lin in (("q", q), ("k", k), ("v", v)):
        _set(lin.weight, _in_heads_back(t[f"w{name}"]), f"{name} weight")
        _set(lin.bias, t[f"b{name}"].reshape(-1), f"{name} bias")
    _set(o.weight, _out_heads_back(t["wo"]), "output weight")
    _set(o.bias, t["bo"], "output bias")


def _read_fused(weight: Tensor, bias: Tensor | None, o: nn.Module, heads: int) -> dict[str, Tensor]:
    """A fused ``(3 D, D)`` projection ``[W_Q; W_K; W_V]`` in ``nn.Linear`` form (timm ``qkv``, torch MHA)."""
    weight = weight.detach()
    bias = torch.zeros(weight.shape[0], dtype=weight.dtype) if bias is None else bias.detach()
    out: dict[str, Tensor] = {}
    for name, w, b in zip("qkv", weight.chunk(3), bias.chunk(3), strict=True):
        out[f"w{name}"], out[f"b{name}"] = _in_heads(w, heads), b.reshape(heads, -1)
    out["wo"], out["bo"] = _out_heads(o.weight.detach(), heads), _bias(o, o.weight.shape[0], weight)
    return out


def _write_fused(weight: Tensor, bias: Tensor | None, o: nn.Module, t: dict[str, Tensor]) -> None:
    _set(weight, torch.cat([_in_heads_back(t[f"w{n}"]) for n in "qkv"]), "qkv weight")
    _set(bias, torch.cat([t[f"b{n}"].reshape(-1) for n in "qkv"]), "qkv bias")
    _set(o.weight, _out_heads_back(t["wo"]), "output weight")
    _set(o.bias, t["bo"], "output bias")


def _read_mlp(fc1: nn.Module | None, fc2: nn.Module | None, d_model: int, like: Tensor) -> dict[str, Tensor]:
    if fc1 is None or fc2 is None:  # a bare attention layer: D_A = 0
        z = like.new_zeros
        return {"wa": z(d_model, 0), "ba": z(0), "wb": z(0, d_model), "bb": z(d_model)}
    w1, w2 = fc1.weight.detach(), fc2.weight.detach()
    return {"wa": w1.T, "ba": _bias(fc1, w1.shape[0], w1), "wb": w2.T, "bb": _bias(fc2, w2.shape[0], w2)}


def _write_mlp(fc1: nn.Module | None, fc2: nn.Module | None, t: dict[str, Tensor]) -> None:
    if fc1 is None or fc2 is None:
        _set(None, t["bb"], "MLP (bare attention layer)")
        return
    _set(fc1.weight, t["wa"].T, "fc1 weight")
    _set(fc1.bias, t["ba"], "fc1 bias")
    _set(fc2.weight, t["wb"].T, "fc2 weight")
    _set(fc2.bias, t["bb"], "fc2 bias")


# ---- torch ------------------------------------------------------------------------------------------------
def _check_mha(mha: nn.MultiheadAttention) -> None:
    if not mha._qkv_same_embed_dim:
        raise ValueError("nn.MultiheadAttention with kdim/vdim != embed_dim is not supported")
    if mha.bias_k is not None or mha.bias_v is not None:
        raise ValueError("nn.MultiheadAttention with add_bias_kv=True is not supported")
    if mha.add_zero_attn:
        raise ValueError("nn.MultiheadAttention with add_zero_attn=True is not supported")


def _read_mha(mha: nn.MultiheadAttention, fc1: nn.Module | None, fc2: nn.Module | None) -> dict[str, Tensor]:
    _check_mha(mha)
    out = _read_fused(mha.in_proj_weight, mha.in_proj_bias, mha.out_proj, mha.num_heads)
    return out | _read_mlp(fc1, fc2, mha.embed_dim, mha.in_proj_weight)


def _write_mha(mha: nn.MultiheadAttention, fc1: nn.Module | None, fc2: nn.Module | None, t) -> None:
    _write_fused(mha.in_proj_weight, mha.in_proj_bias, mha.out_proj, t)
    _write_mlp(fc1, fc2, t)


def _torch_families() -> list[_Family]:
    def layer_read(b, h):
        return _read_mha(b.self_attn, b.linear1, b.linear2)

    def layer_write(b, t, h):
        _write_mha(b.self_attn, b.linear1, b.linear2, t)

    return [
        _Family(
            "torch.nn.MultiheadAttention",
            lambda m: isinstance(m, nn.MultiheadAttention),
            lambda m: [m],
            lambda m: m.num_heads,
            lambda b, h: _read_mha(b, None, None),
            lambda b, t, h: _write_mha(b, None, None, t),
        ),
        _Family(
            "torch.nn.TransformerEncoderLayer",
            lambda m: isinstance(m, nn.TransformerEncoderLayer),
            lambda m: [m],
            lambda m: m.self_attn.num_heads,
            layer_read,
            layer_write,
        ),
        _Family(
            "torch.nn.TransformerEncoder",
            lambda m: isinstance(m, nn.TransformerEncoder),
            lambda m: list(m.layers),
            lambda m: m.layers[0].self_attn.num_heads,
            layer_read,
            layer_write,
        ),
    ]


# ---- Hugging Face -----------------------------------------------------------------------------------------
def _hf_families() -> list[_Family]:
    try:
        from transformers import BertModel, GPT2Model, RobertaModel, ViTModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        return []

    def bert_read(b, h):
        a = b.attention
        return _read_linears(a.self.query, a.self.key, a.self.value, a.output.dense, h) | _read_mlp(
            b.intermediate.dense, b.output.dense, a.output.dense.weight.shape[0], a.output.dense.weight
        )

    def bert_write(b, t, h):
        a = b.attention
        _write_linears(a.self.query, a.self.key, a.self.value, a.output.dense, t)
        _write_mlp(b.intermediate.dense, b.output.dense, t)

    def vit_read(b, h):
        a = b.attention
        return _read_linears(a.q_proj, a.k_proj, a.v_proj, a.o_proj, h) | _read_mlp(
            b.mlp.fc1, b.mlp.fc2, a.o_proj.weight.shape[0], a.o_proj.weight
        )

    def vit_write(b, t, h):
        a = b.attention
        _write_linears(a.q_proj, a.k_proj, a.v_proj, a.o_proj, t)
        _write_mlp(b.mlp.fc1, b.mlp.fc2, t)

    # GPT-2's Conv1D computes x @ W + b with W of shape (in, out): the transpose of nn.Linear's weight.
    def gpt2_read(b, h):
        attn, mlp = b.attn, b.mlp
        out = _read_fused(attn.c_attn.weight.T, attn.c_attn.bias, _Conv1DAsLinear(attn.c_proj), h)
        fc1, fc2 = _Conv1DAsLinear(mlp.c_fc), _Conv1DAsLinear(mlp.c_proj)
        return out | _read_mlp(fc1, fc2, out["bo"].shape[0], out["wq"])

    def gpt2_write(b, t, h):
        attn, mlp = b.attn, b.mlp
        _set(attn.c_attn.weight, torch.cat([_in_heads_back(t[f"w{n}"]) for n in "qkv"]).T, "c_attn weight")
        _set(attn.c_attn.bias, torch.cat([t[f"b{n}"].reshape(-1) for n in "qkv"]), "c_attn bias")
        _set(attn.c_proj.weight, _out_heads_back(t["wo"]).T, "c_proj weight")
        _set(attn.c_proj.bias, t["bo"], "c_proj bias")
        _set(mlp.c_fc.weight, t["wa"], "c_fc weight")
        _set(mlp.c_fc.bias, t["ba"], "c_fc bias")
        _set(mlp.c_proj.weight, t["wb"], "mlp c_proj weight")
        _set(mlp.c_proj.bias, t["bb"], "mlp c_proj bias")

    return [
        _Family(
            "transformers.BertModel / RobertaModel",
            lambda m: isinstance(m, BertModel | RobertaModel),
            lambda m: list(m.encoder.layer),
            lambda m: m.config.num_attention_heads,
            bert_read,
            bert_write,
        ),
        _Family(
            "transformers.ViTModel",
            lambda m: isinstance(m, ViTModel),
            lambda m: list(m.layers),
            lambda m: m.config.num_attention_heads,
            vit_read,
            vit_write,
        ),
        _Family(
            "transformers.GPT2Model",
            lambda m: isinstance(m, GPT2Model),
            lambda m: list(m.h),
            lambda m: m.config.n_head,
            gpt2_read,
            gpt2_write,
        ),
    ]


class _Conv1DAsLinear:
    """Read-only view of a HF ``Conv1D`` (weight ``(in, out)``) as an ``nn.Linear`` (weight ``(out, in)``)."""

    def __init__(self, conv: nn.Module) -> None:
        self.weight, self.bias = conv.weight.T, conv.bias


# ---- timm -------------------------------------------------------------------------------------------------
def _timm_families() -> list[_Family]:
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:  # pragma: no cover - timm is a dependency
        return []

    def check(b: nn.Module) -> None:
        attn = b.attn
        if not hasattr(attn, "qkv") or not hasattr(attn, "proj"):
            raise ValueError(f"timm block {type(b).__name__} has no fused qkv attention; expected timm Block")
        for name in ("q_norm", "k_norm", "norm"):
            if not isinstance(getattr(attn, name, nn.Identity()), nn.Identity):
                raise ValueError(f"timm attention with {name} (qk_norm / scale_norm) is not supported")
        if not isinstance(getattr(b.mlp, "norm", nn.Identity()), nn.Identity):
            raise ValueError("timm Mlp with a norm on the hidden layer (scale_mlp_norm) is not supported")
        if not hasattr(b.mlp, "fc1"):
            raise ValueError(f"timm MLP {type(b.mlp).__name__} is not supported (expected Mlp with fc1/fc2)")

    def read(b, h):
        check(b)
        out = _read_fused(b.attn.qkv.weight, b.attn.qkv.bias, b.attn.proj, h)
        return out | _read_mlp(b.mlp.fc1, b.mlp.fc2, out["bo"].shape[0], out["wq"])

    def write(b, t, h):
        _write_fused(b.attn.qkv.weight, b.attn.qkv.bias, b.attn.proj, t)
        _write_mlp(b.mlp.fc1, b.mlp.fc2, t)

    return [
        _Family(
            "timm VisionTransformer",
            lambda m: isinstance(m, VisionTransformer),
            lambda m: list(m.blocks),
            lambda m: m.blocks[0].attn.num_heads,
            read,
            write,
        )
    ]


def _zoo_families() -> list[_Family]:
    from .transformer_zoo import SmallViT

    return [
        _Family(
            "nfn_ext.transformer_zoo.SmallViT",
            lambda m: isinstance(m, SmallViT),
            lambda m: list(m.blocks),
            lambda m: m.blocks[0].attn.num_heads,
            lambda b, h: _read_mha(b.attn, b.fc1, b.fc2),
            lambda b, t, h: _write_mha(b.attn, b.fc1, b.fc2, t),
        )
    ]


def _families() -> list[_Family]:
    return _hf_families() + _timm_families() + _torch_families() + _zoo_families()


def supported_models() -> list[str]:
    """Names of the model families :meth:`TransformerWeightSpace.from_module` reads."""
    return [f.name for f in _families()]


def _family_of(model: nn.Module) -> _Family:
    for family in _families():
        if family.matches(model):
            return family
    raise TypeError(
        f"TransformerWeightSpace cannot read {type(model).__module__}.{type(model).__name__}; supported: "
        + ", ".join(supported_models())
    )


@dataclass
class TransformerWeightSpace:
    """A batch of transformer encoders (or equivariant features of them); tensors as in the module docstring.

    ``template`` is the source model (shared, never modified); :meth:`to_module` copies it.
    """

    wq: Tensor
    bq: Tensor
    wk: Tensor
    bk: Tensor
    wv: Tensor
    bv: Tensor
    wo: Tensor
    bo: Tensor
    wa: Tensor
    ba: Tensor
    wb: Tensor
    bb: Tensor
    spec: TransformerWeightSpaceSpec
    template: nn.Module | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        shapes = self.spec.shapes()
        B, C = self.wq.shape[:2]
        for name in FIELDS:
            t = getattr(self, name)
            if tuple(t.shape) != (B, C, *shapes[name]):
                raise ValueError(f"{name}: expected shape {(B, C, *shapes[name])}, got {tuple(t.shape)}")

    @property
    def tensors(self) -> dict[str, Tensor]:
        return {name: getattr(self, name) for name in FIELDS}

    @property
    def batch_size(self) -> int:
        return self.wq.shape[0]

    @property
    def channels(self) -> int:
        return self.wq.shape[1]

    def __len__(self) -> int:
        return self.batch_size

    def __repr__(self) -> str:
        return f"TransformerWeightSpace(batch={self.batch_size}, channels={self.channels}, spec={self.spec})"

    def __getitem__(self, index: int | slice | Tensor | Sequence[int]) -> TransformerWeightSpace:
        """Select models along the batch axis (an integer keeps a batch of one)."""
        if isinstance(index, int):
            if not -self.batch_size <= index < self.batch_size:
                raise IndexError(f"model index {index} out of range for a batch of {self.batch_size}")
            index = slice(index, index + 1 if index != -1 else None)
        return self.map(lambda t: t[index])

    def map(self, fn: Callable[[Tensor], Tensor]) -> TransformerWeightSpace:
        """Apply ``fn`` to every tensor."""
        return replace(self, **{name: fn(getattr(self, name)) for name in FIELDS})

    def to(self, *args, **kwargs) -> TransformerWeightSpace:
        return self.map(lambda t: t.to(*args, **kwargs))

    def flatten(self) -> Tensor:
        """All entries as ``(B, C, P)`` with ``P = spec.num_params``."""
        return torch.cat([getattr(self, name).flatten(2) for name in FIELDS], dim=2)

    @classmethod
    def from_module(cls, model: nn.Module) -> TransformerWeightSpace:
        """Read one model (batch 1, channel 1); raises ``TypeError`` listing the supported families."""
        family = _family_of(model)
        blocks, heads = family.blocks(model), family.heads(model)
        per_block = [family.read(b, heads) for b in blocks]
        t = {name: torch.stack([blk[name] for blk in per_block]).clone()[None, None] for name in FIELDS}
        L, H, D, K = t["wq"].shape[2:]
        spec = TransformerWeightSpaceSpec(L, H, D, K, t["wv"].shape[-1], t["wa"].shape[-1])
        return cls(**t, spec=spec, template=model)

    @classmethod
    def from_modules(cls, models: Iterable[nn.Module]) -> TransformerWeightSpace:
        """Read several models of one shape (any supported families) into one batch."""
        return cls.stack([cls.from_module(m) for m in models])

    @classmethod
    def stack(cls, spaces: Sequence[TransformerWeightSpace]) -> TransformerWeightSpace:
        """Concatenate weight spaces of the same spec along the batch axis (template of the first)."""
        if not spaces:
            raise ValueError("expected at least one weight space to stack")
        spec = spaces[0].spec
        for s in spaces[1:]:
            if s.spec != spec:
                raise ValueError(f"cannot stack weight spaces of different shapes: {spec} vs {s.spec}")
        return cls(
            **{n: torch.cat([getattr(s, n) for s in spaces]) for n in FIELDS},
            spec=spec,
            template=spaces[0].template,
        )

    def to_module(self, index: int = 0, template: nn.Module | None = None) -> nn.Module:
        """A deep copy of ``template`` (default: the source model) carrying the weights of model ``index``.

        Parameters outside the weight space (embeddings, LayerNorms, heads) are those of the template.
        """
        template = template if template is not None else self.template
        if template is None:
            raise ValueError("this weight space has no source model; pass template=")
        if self.channels != 1:
            raise ValueError(f"expected 1 channel to write into a model, got {self.channels}")
        family = _family_of(template)
        model = copy.deepcopy(template)
        blocks, heads = family.blocks(model), family.heads(model)
        target = TransformerWeightSpace.from_module(model).spec
        if target != self.spec:
            raise ValueError(f"template has shape {target}, weight space {self.spec}")
        for l, block in enumerate(blocks):
            family.write(block, {n: getattr(self, n)[index, 0, l] for n in FIELDS}, heads)
        return model
