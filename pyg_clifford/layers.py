r"""Clifford-group equivariant layers on multivector features ``[..., channels, 2**n]`` (CGENN style).

Every layer mixes channels with one weight per grade, multiplies multivectors, or scales each grade by an
invariant, so it commutes with the Clifford-group action :meth:`CliffordAlgebra.versor_action`.

The public layout is ``[..., C, 2**n]``. Inside, every layer works on the blade-major layout
``[2**n, C, M]`` (:func:`to_blade_major`, ``M`` the batch, innermost): a grade-wise linear map is then one
batched matmul over blades, the per-grade invariants are one ``[n + 1, 2**n]`` matmul, and every
per-channel parameter broadcasts as a scalar over a contiguous run of ``M`` entries (vectorised loops).
:class:`CEMLP` converts once on the way in and once on the way out; each layer's :meth:`forward` converts
around its own :meth:`~MVModule.forward_blade_major`.
"""

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .algebra import CliffordAlgebra
from .product import (
    GatherWeightedProduct,
    ProductTables,
    WeightedGeometricProduct,
    WeightedProductIndex,
    product_tables,
)


class _SwapOuterAxes(torch.autograd.Function):
    """``[a, C, b] -> [b, C, a]``, contiguous, and the same for the gradient: a plain ``permute`` would hand
    its consumers (batched matmuls, ``index_add``) a gradient with unit stride on the batch axis, which each
    of them then copies."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.permute(2, 1, 0).contiguous()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad.permute(2, 1, 0).contiguous()


def to_blade_major(x: Tensor) -> Tensor:
    """``[..., C, 2**n]`` -> contiguous ``[2**n, C, M]`` with ``M`` the product of the leading dimensions."""
    return _SwapOuterAxes.apply(x.reshape(math.prod(x.shape[:-2]), x.size(-2), x.size(-1)))


def from_blade_major(x: Tensor, batch_shape: tuple[int, ...] | torch.Size) -> Tensor:
    """``[2**n, C, M]`` -> contiguous ``[*batch_shape, C, 2**n]`` (the inverse of :func:`to_blade_major`)."""
    return _SwapOuterAxes.apply(x).view(*batch_shape, x.size(1), x.size(0))


class MVModule(nn.Module):
    """A multivector layer: :meth:`forward` takes the public layout ``[..., C, 2**n]``,
    :meth:`forward_blade_major` the internal one ``[2**n, C, M]``."""

    algebra: CliffordAlgebra
    in_channels: int

    def forward(self, x: Tensor) -> Tensor:
        self.algebra.check(x)
        if x.dim() < 2 or x.size(-2) != self.in_channels:
            raise ValueError(
                f"Expected input of shape [..., {self.in_channels}, {self.algebra.num_blades}], "
                f"got {tuple(x.shape)}"
            )
        return from_blade_major(self.forward_blade_major(to_blade_major(x)), x.shape[:-2])

    def forward_blade_major(self, x: Tensor) -> Tensor:
        raise NotImplementedError


class MVLinear(MVModule):
    r"""Grade-wise linear map over channels, bias on the scalar blade only:

    .. math::
        y_{c, A} = \sum_m W_{c, m, |A|}\, x_{m, A} + \delta_{A, \emptyset}\, b_c

    computed as one batched matmul over blades, ``[2**n, C_out, C_in] @ [2**n, C_in, M]``.

    Args:
        in_channels (int): input multivector channels.
        out_channels (int): output multivector channels.
        algebra (CliffordAlgebra): the algebra.
        bias (bool): add a learnable scalar bias. (default: :obj:`True`)

    Shapes:
        - **input:** :math:`(*, C_{in}, 2^n)`
        - **output:** :math:`(*, C_{out}, 2^n)`
    """

    def __init__(
        self, in_channels: int, out_channels: int, algebra: CliffordAlgebra, bias: bool = True
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.algebra = in_channels, out_channels, algebra
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, algebra.num_grades))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=1.0 / math.sqrt(self.in_channels))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward_blade_major(self, x: Tensor, residual: Tensor | None = None, alpha: float = 1.0) -> Tensor:
        r"""``residual + alpha (W x + b)``, blade-major: ``[2**n, C_in, M]`` -> ``[2**n, C_out, M]``."""
        weight = self.weight.permute(2, 0, 1).index_select(
            0, self.algebra.blade_grades
        )  # [2**n, C_out, C_in]
        if self.bias is None:
            if residual is None:
                return torch.bmm(weight, x) if alpha == 1.0 else torch.bmm(weight, x) * alpha
            return torch.baddbmm(residual, weight, x, alpha=alpha)
        bias = self.bias.new_zeros(self.algebra.num_blades, self.out_channels, 1)
        bias[0, :, 0] = self.bias * alpha
        out = torch.baddbmm(bias, weight, x, alpha=alpha)
        return out if residual is None else out.add_(residual)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}"


class GradeTables(NamedTuple):
    r"""Blade tables of an algebra in a working dtype: the grade of each blade ``[2**n]``, the signed grade
    sums :math:`P` ``[n + 1, 2**n]`` (:meth:`CliffordAlgebra.grade_sum_matrix`), the unsigned ones ``U``,
    the blade squares :math:`\tilde e_A e_A` ``[2**n]``, :math:`2 P^\top` ``[2**n, n + 1]`` (the
    derivative of the grade forms, expanded back to the blades) and the same with the scalar blade's entry
    zeroed (MVSiLU, whose scalar invariant is linear)."""

    grades: Tensor
    signed: Tensor
    unsigned: Tensor
    squares: Tensor
    doubled: Tensor
    doubled_gate: Tensor


def grade_tables(algebra: CliffordAlgebra, dtype: torch.dtype) -> GradeTables:
    """The :class:`GradeTables` of ``algebra`` in ``dtype``, cached in ``algebra.table_cache`` per dtype and
    device in eager mode (they are constants; building them is a dozen small operations)."""
    compiling = torch.compiler.is_compiling()
    key = ("grade_tables", dtype, algebra.blade_grades.device)
    if not compiling and key in algebra.table_cache:
        return algebra.table_cache[key]
    with torch.inference_mode(False):  # normal tensors even when first built under inference_mode
        signed = algebra.grade_sum_matrix(dtype)
        doubled = 2 * signed.t()
        doubled_gate = doubled.clone()
        doubled_gate[0] = 0
        tables = GradeTables(
            algebra.blade_grades,
            signed,
            (signed != 0).to(dtype),
            algebra.blade_squares(dtype),
            doubled,
            doubled_gate,
        )
    if not compiling:
        algebra.table_cache[key] = tables
    return tables


def _grade_sums(matrix: Tensor, x: Tensor, out: Tensor | None = None) -> Tensor:
    """``matrix [G, B] @ x [B, C, M] -> [G, C, M]`` (into ``out`` when given)."""
    flat = x.reshape(x.size(0), -1)
    if out is None:
        return (matrix @ flat).view(matrix.size(0), *x.shape[1:])
    torch.mm(matrix, flat, out=out.view(matrix.size(0), -1))
    return out


def _expand(per_grade: Tensor, grades: Tensor, out: Tensor) -> Tensor:
    """Per-grade ``[G, C, M]`` repeated over the blades of each grade, written into ``out`` ``[B, C, M]``."""
    return torch.index_select(per_grade, 0, grades, out=out)


def _double_backward(formula, inputs: tuple[Tensor, ...], grad: Tensor) -> list[Tensor | None]:
    """Gradients of ``formula(*inputs)`` with ``create_graph=True``: the backward of the fused functions under
    ``create_graph`` (second derivatives), through the plain differentiable formula."""
    with torch.enable_grad():
        wanted = [t for t in inputs if t.requires_grad]
        grads = iter(
            torch.autograd.grad(formula(*inputs), wanted, grad, create_graph=True, allow_unused=True)
        )
        return [next(grads) if t.requires_grad else None for t in inputs]


class _GradeGate(torch.autograd.Function):
    r"""MVSiLU on blade-major ``x``: :math:`y = x \odot E(\sigma(\alpha s + \beta))` with
    :math:`s_0 = x_0`, :math:`s_g = q(\langle x \rangle_g)`; saves only ``x`` and recomputes the gates.
    Forward and backward reuse their two ``[B, C, M]`` buffers in place."""

    @staticmethod
    def formula(x: Tensor, alpha: Tensor, beta: Tensor, tables: GradeTables) -> Tensor:
        invariants = _grade_sums(tables.signed, x * x)
        invariants = torch.cat([x[:1], invariants[1:]])
        return x * torch.sigmoid(alpha * invariants + beta)[tables.grades]

    @staticmethod
    def gate(
        x: Tensor, alpha: Tensor, beta: Tensor, tables: GradeTables, buffer: Tensor
    ) -> tuple[Tensor, ...]:
        invariants = _grade_sums(tables.signed, torch.mul(x, x, out=buffer))
        invariants[0] = x[0]
        return invariants, torch.sigmoid(alpha * invariants + beta)

    @staticmethod
    def forward(ctx, x: Tensor, alpha: Tensor, beta: Tensor, tables: GradeTables) -> Tensor:
        ctx.save_for_backward(x, alpha, beta)
        ctx.tables = tables
        buffer = x.new_empty(x.shape)
        _, gate = _GradeGate.gate(x, alpha, beta, tables, buffer)
        return _expand(gate, tables.grades, buffer).mul_(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, alpha, beta = ctx.saved_tensors
        tables = ctx.tables
        if torch.is_grad_enabled():
            return (
                *_double_backward(lambda *t: _GradeGate.formula(*t, tables), (x, alpha, beta), grad),
                None,
            )
        buffer = x.new_empty(x.shape)
        invariants, gate = _GradeGate.gate(x, alpha, beta, tables, buffer)
        dot = _grade_sums(tables.unsigned, torch.mul(grad, x, out=buffer))  # dL/dgate, [G, C, M]
        dgate = dot.mul_(gate).mul_(1 - gate)  # dL/d(alpha s + beta)
        ds = dgate * alpha
        grad_x = _expand(gate, tables.grades, x.new_empty(x.shape)).mul_(grad)
        grad_x.addcmul_(_grade_sums(tables.doubled_gate, ds, out=buffer), x)  # s_0 = x_0 is linear
        grad_x[0] += ds[0]
        grad_alpha = (dgate * invariants).sum(2, keepdim=True)
        grad_beta = dgate.sum(2, keepdim=True)
        return grad_x, grad_alpha, grad_beta, None


class _GradeNormalise(torch.autograd.Function):
    r"""MVGradeNorm on blade-major ``x``: :math:`y = x / E(\sigma(a)(n - 1) + 1)`,
    :math:`n_g = \sqrt{|q(\langle x \rangle_g)| + \epsilon}`; saves only ``x``, reuses its buffers in
    place."""

    @staticmethod
    def formula(x: Tensor, a: Tensor, tables: GradeTables, eps: float) -> Tensor:
        norms = (_grade_sums(tables.signed, x * x).abs() + eps).sqrt()
        return x / (torch.sigmoid(a) * (norms - 1) + 1)[tables.grades]

    @staticmethod
    def forward(ctx, x: Tensor, a: Tensor, tables: GradeTables, eps: float) -> Tensor:
        ctx.save_for_backward(x, a)
        ctx.tables, ctx.eps = tables, eps
        buffer = x.new_empty(x.shape)
        norms = _grade_sums(tables.signed, torch.mul(x, x, out=buffer)).abs_().add_(eps).sqrt_()
        inverse = norms.sub_(1).mul_(torch.sigmoid(a)).add_(1).reciprocal_()
        return _expand(inverse, tables.grades, buffer).mul_(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, a = ctx.saved_tensors
        tables = ctx.tables
        if torch.is_grad_enabled():
            return (
                *_double_backward(lambda *t: _GradeNormalise.formula(*t, tables, ctx.eps), (x, a), grad),
                None,
                None,
            )
        buffer = x.new_empty(x.shape)
        forms = _grade_sums(tables.signed, torch.mul(x, x, out=buffer))
        norms = (forms.abs() + ctx.eps).sqrt_()
        weight = torch.sigmoid(a)
        inverse = (weight * (norms - 1)).add_(1).reciprocal_()  # 1 / denominator
        dot = _grade_sums(tables.unsigned, torch.mul(grad, x, out=buffer))
        ddenominator = dot.mul_(inverse).mul_(inverse).neg_()  # dL/d(denominator)
        dforms = (ddenominator * weight).mul_(torch.sign(forms)).div_(2 * norms)
        grad_x = _expand(inverse, tables.grades, x.new_empty(x.shape)).mul_(grad)
        grad_x.addcmul_(_grade_sums(tables.doubled, dforms, out=buffer), x)
        grad_a = (ddenominator * (norms - 1)).sum(2, keepdim=True) * weight * (1 - weight)
        return grad_x, grad_a, None, None


class _LayerNormalise(torch.autograd.Function):
    r"""MVLayerNorm on blade-major ``x``: :math:`y = x\, \gamma / (\bar n + \epsilon)`,
    :math:`\bar n_m = \frac1C \sum_c \sqrt{|q(x_{m,c})| + 10^{-12}}`; saves only ``x``, reuses its
    buffers in place."""

    @staticmethod
    def formula(x: Tensor, scale: Tensor, squares: Tensor, eps: float) -> Tensor:
        forms = (squares @ (x * x).reshape(x.size(0), -1)).view(x.shape[1:])  # [C, M]
        mean = (forms.abs() + 1e-12).sqrt().mean(0, keepdim=True)  # [1, M]
        return x * (scale / (mean + eps))

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, squares: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(x, scale)
        ctx.squares, ctx.eps = squares, eps
        buffer = x.new_empty(x.shape)
        forms = (squares @ torch.mul(x, x, out=buffer).view(x.size(0), -1)).view(x.shape[1:])  # [C, M]
        mean = forms.abs_().add_(1e-12).sqrt_().mean(0, keepdim=True)  # [1, M]
        return torch.mul(x, scale / mean.add_(eps), out=buffer)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, scale = ctx.saved_tensors
        squares = ctx.squares
        if torch.is_grad_enabled():
            return (
                *_double_backward(lambda *t: _LayerNormalise.formula(*t, squares, ctx.eps), (x, scale), grad),
                None,
                None,
            )
        buffer = x.new_empty(x.shape)
        forms = (squares @ torch.mul(x, x, out=buffer).view(x.size(0), -1)).view(x.shape[1:])
        norms = (forms.abs() + 1e-12).sqrt_()
        inverse = (norms.mean(0, keepdim=True) + ctx.eps).reciprocal_()  # [1, M]
        dot = torch.mul(grad, x, out=buffer).sum(0)  # dL/d(factor), [C, M]
        dmean = (dot * scale).sum(0, keepdim=True).mul_(inverse).mul_(inverse).neg_()  # [1, M]
        dforms = torch.sign(forms).mul_(dmean / (2 * x.size(1))).div_(norms)  # [C, M]
        grad_x = torch.mul(grad, scale * inverse)
        grad_x.add_(torch.mul(x, dforms, out=buffer).mul_((2 * squares)[:, None, None]))
        grad_scale = (dot * inverse).sum(1, keepdim=True)
        return grad_x, grad_scale, None, None


class MVSiLU(MVModule):
    r"""Grade-gated SiLU: each grade is scaled by a sigmoid of an invariant of that grade,

    .. math::
        \langle x_c \rangle_g \leftarrow \sigma(\alpha_{c,g}\, s_{c,g} + \beta_{c,g}) \langle x_c \rangle_g,
        \quad s_{c,0} = \langle x_c \rangle_0,\; s_{c,g} = q(\langle x_c \rangle_g)\ (g \ge 1).

    Shapes:
        - **input / output:** :math:`(*, C, 2^n)`
    """

    def __init__(self, channels: int, algebra: CliffordAlgebra) -> None:
        super().__init__()
        self.channels = self.in_channels = channels
        self.algebra = algebra
        self.alpha = nn.Parameter(torch.empty(channels, algebra.num_grades))
        self.beta = nn.Parameter(torch.empty(channels, algebra.num_grades))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.alpha)
        nn.init.zeros_(self.beta)

    def forward_blade_major(self, x: Tensor) -> Tensor:
        tables = grade_tables(self.algebra, x.dtype)
        return _GradeGate.apply(x, self.alpha.t()[..., None], self.beta.t()[..., None], tables)


class MVGradeNorm(MVModule):
    r"""Soft per-grade normalisation :math:`x_g / (\sigma(a_{c,g}) (\|x_g\| - 1) + 1)`, :math:`a` init 0,
    with :math:`\|x_g\| = \sqrt{|q(x_g)| + \epsilon}`.

    Shapes:
        - **input / output:** :math:`(*, C, 2^n)`
    """

    def __init__(self, channels: int, algebra: CliffordAlgebra) -> None:
        super().__init__()
        self.in_channels, self.algebra = channels, algebra
        self.a = nn.Parameter(torch.empty(channels, algebra.num_grades))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.a)

    def forward_blade_major(self, x: Tensor, eps: float = 1e-12) -> Tensor:
        return _GradeNormalise.apply(x, self.a.t()[..., None], grade_tables(self.algebra, x.dtype), eps)


class SteerableGeometricProduct(MVModule):
    r"""Weighted geometric product of a channel with a linear mix of the channels:

    .. math::
        y = \mathrm{GradeNorm}(\mathrm{Linear}_R(x)), \quad
        z_{c,j} = \sum_i \sigma_{ij}\, w_{c, |i|, |j|, |k|}\; x_{c,i}\, y_{c,k},\ k = i \oplus j, \qquad
        \mathrm{out} = (\mathrm{Linear}_L(x) + z) / \sqrt 2

    with one weight per channel and grade triplet (e.g. 20 non-zero triplets for :math:`Cl(3,0)`).
    The product is :class:`WeightedGeometricProduct` (an autograd function that saves only its operands).
    Its signed weight tables ``[2**n, 2**n, C, 1]`` are built once per parameter update and cached (keyed on
    the weight's version counter), not once per call.

    Shapes:
        - **input / output:** :math:`(*, C, 2^n)`
    """

    SCALE = 1.0 / math.sqrt(2.0)
    r"""The :math:`1/\sqrt 2` of ``out``."""

    triplet_index: Tensor
    right_index: Tensor
    right_position: Tensor

    def __init__(self, channels: int, algebra: CliffordAlgebra) -> None:
        super().__init__()
        self.channels = self.in_channels = channels
        self.algebra = algebra
        g = algebra.blade_grades
        triplets = (g[:, None] * algebra.num_grades + g[None, :]) * algebra.num_grades + g[
            algebra.right_index
        ]
        unique, index = torch.unique(triplets, return_inverse=True)
        self.register_buffer("triplet_index", index.flatten(), persistent=False)
        num = algebra.num_blades
        self.register_buffer("right_index", algebra.right_index.flatten(), persistent=False)  # k per (i, j)
        right_position = torch.arange(num)[:, None] * num + algebra.right_index  # (i, i xor k) per (i, k)
        self.register_buffer("right_position", right_position.flatten(), persistent=False)
        self.num_triplets = unique.numel()
        self.linear_right = MVLinear(channels, channels, algebra, bias=False)
        self.linear_left = MVLinear(channels, channels, algebra)
        self.normalize = MVGradeNorm(channels, algebra)
        self.weight = nn.Parameter(torch.empty(channels, self.num_triplets))
        self._tables: tuple[tuple, ProductTables] | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.linear_right.reset_parameters()
        self.linear_left.reset_parameters()
        self.normalize.reset_parameters()
        nn.init.normal_(self.weight, std=1.0 / math.sqrt(self.algebra.dim + 1))

    def product_index(self) -> WeightedProductIndex:
        return WeightedProductIndex(
            self.triplet_index, self.right_index, self.right_position, self.algebra.sign.flatten()
        )

    def product_tables(self) -> ProductTables:
        """The eager product's tables of the current weights, cached until the weight changes (compiled
        graphs build theirs inside :meth:`gather_product`)."""
        weight = self.weight.detach()
        key = (weight._version, weight.data_ptr(), weight.dtype, weight.device)
        if self._tables is None or self._tables[0] != key:
            tables = product_tables(weight, self.product_index(), self.algebra.num_blades, self.SCALE)
            self._tables = (key, tables)
        return self._tables[1]

    def forward_blade_major(self, x: Tensor) -> Tensor:
        y = self.normalize.forward_blade_major(self.linear_right.forward_blade_major(x))
        if torch.compiler.is_compiling():
            z = self.gather_product(x, y, self.SCALE)
        else:
            z = WeightedGeometricProduct.apply(
                x, y, self.weight, self.product_tables(), self.product_index(), self.SCALE
            )
        return self.linear_left.forward_blade_major(x, residual=z, alpha=self.SCALE)

    def gather_product(self, x: Tensor, y: Tensor, scale: float) -> Tensor:
        r"""The same weighted product, :math:`z_j = s \sum_i (\sigma_{ij} w_{t(i,j)}) \odot x_i \odot
        y_{i \oplus j}`, as :class:`~pyg_clifford.product.GatherWeightedProduct` (out-of-place gathers,
        tables built from the live weight): used inside ``torch.compile`` graphs, where inductor fuses its
        forward and each backward term into one loop with no ``[2**n, 2**n, C, M]`` buffer. Eager uses
        :class:`WeightedGeometricProduct`, which saves only its operands and reuses one buffer in place."""
        return GatherWeightedProduct.apply(x, y, self.weight, *self.product_index(), scale)


class MVLayerNorm(MVModule):
    r"""Multivector layer norm: :math:`x_c \leftarrow \gamma_c\, x_c / (\frac1C \sum_m \|x_m\| + \epsilon)`,
    with :math:`\|x\| = \sqrt{|q(x)| + 10^{-12}}`.

    Shapes:
        - **input / output:** :math:`(*, C, 2^n)`
    """

    def __init__(self, channels: int, algebra: CliffordAlgebra, eps: float = 1e-6) -> None:
        super().__init__()
        self.in_channels, self.algebra, self.eps = channels, algebra, eps
        self.scale = nn.Parameter(torch.empty(channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.scale)

    def forward_blade_major(self, x: Tensor) -> Tensor:
        squares = grade_tables(self.algebra, x.dtype).squares
        return _LayerNormalise.apply(x, self.scale[:, None], squares, self.eps)


class CEMLP(MVModule):
    r"""Clifford-equivariant MLP: ``num_layers`` blocks of
    [:class:`MVLinear` -> :class:`MVSiLU` -> :class:`SteerableGeometricProduct` -> :class:`MVLayerNorm`]
    followed by an output :class:`MVLinear`, all in the blade-major layout between one conversion in and one
    out.

    Shapes:
        - **input:** :math:`(*, C_{in}, 2^n)`
        - **output:** :math:`(*, C_{out}, 2^n)`
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        out_channels: int,
        algebra: CliffordAlgebra,
        num_layers: int = 1,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"Expected num_layers >= 1, got {num_layers}")
        self.in_channels, self.algebra = in_channels, algebra
        blocks: list[MVModule] = []
        for layer in range(num_layers):
            width = in_channels if layer == 0 else hidden_channels
            blocks += [
                MVLinear(width, hidden_channels, algebra),
                MVSiLU(hidden_channels, algebra),
                SteerableGeometricProduct(hidden_channels, algebra),
                MVLayerNorm(hidden_channels, algebra),
            ]
        blocks.append(MVLinear(hidden_channels, out_channels, algebra))
        self.net = nn.Sequential(*blocks)

    def reset_parameters(self) -> None:
        for module in self.net:
            module.reset_parameters()

    def forward_blade_major(self, x: Tensor) -> Tensor:
        for module in self.net:
            x = module.forward_blade_major(x)
        return x
