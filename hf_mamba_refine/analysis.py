"""Per-layer diagnosis of the token-dynamics regime of a Mamba model.

For a mixer with ``x_proj.weight = [S_delta; S_B; S_C]`` the continuous-time limit of the layers is governed
by the quadratic form of ``S_C^T S_B``; the regime follows from the spectrum of its symmetric part

.. math::
    \\operatorname{sym}(S_C^\\top S_B) = \\tfrac12 (S_C^\\top S_B + S_B^\\top S_C) = U^\\top J U, \\qquad
    U = \\begin{bmatrix} S_C \\\\ S_B \\end{bmatrix}, \\;
    J = \\tfrac12 \\begin{bmatrix} 0 & I_N \\\\ I_N & 0 \\end{bmatrix},

whose nonzero eigenvalues are those of ``R J R^T`` with ``U^T = Q R`` (at most ``2N`` of them, computed in
float64 without forming the ``I x I`` matrix): positive semidefinite -> ``divergent``, negative
semidefinite -> ``convergent``, indefinite -> ``mixed``.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .patching import find_mixers


def symmetric_spectrum(s_b: Tensor, s_c: Tensor) -> Tensor:
    """Eigenvalues (ascending) of ``sym(S_C^T S_B)`` on the span of ``[S_C; S_B]^T``.

    Args:
        s_b, s_c: ``[..., N, I]``.

    Returns:
        ``[..., min(I, 2N)]`` float64 eigenvalues; the remaining ``I - 2N`` eigenvalues are zero.
    """
    if s_b.shape != s_c.shape:
        raise ValueError(f"S_B and S_C must have one shape, got {tuple(s_b.shape)} and {tuple(s_c.shape)}")
    n = s_b.shape[-2]
    stacked = torch.cat([s_c, s_b], dim=-2).double()
    r = torch.linalg.qr(stacked.mT, mode="reduced").R  # [..., k, 2N]
    eye = torch.eye(n, dtype=torch.float64, device=r.device)
    zero = torch.zeros_like(eye)
    j = 0.5 * torch.cat([torch.cat([zero, eye], 1), torch.cat([eye, zero], 1)], 0)
    return torch.linalg.eigvalsh(r @ j @ r.mT)


def classify_spectrum(eigenvalues: Tensor, rtol: float = 1e-5) -> str:
    """``divergent`` (PSD), ``convergent`` (NSD), ``mixed`` (indefinite) or ``null``, up to ``rtol``."""
    scale = float(eigenvalues.abs().max()) if eigenvalues.numel() else 0.0
    if scale == 0.0:
        return "null"
    tol = rtol * scale
    if float(eigenvalues.min()) >= -tol:
        return "divergent"
    if float(eigenvalues.max()) <= tol:
        return "convergent"
    return "mixed"


@dataclass
class LayerDynamics:
    """Diagnosis of one mixer: the spectrum of ``sym(S_C^T S_B)``, its regime and statistics of Delta."""

    layer: int
    eigenvalues: Tensor
    regime: str
    delta_mean: float
    delta_std: float
    delta_min: float
    delta_max: float


@dataclass
class DynamicsReport:
    """Per-layer report returned by :func:`analyze`; ``print(report)`` shows a Markdown table.

    ``delta_source`` is ``"bias"`` (Delta = softplus(dt_proj.bias), the input-independent part) or
    ``"inputs"`` (Delta over all tokens, channels and batch entries of the inputs given to :func:`analyze`).
    """

    layers: list[LayerDynamics]
    delta_source: str

    @property
    def regimes(self) -> list[str]:
        return [layer.regime for layer in self.layers]

    def __str__(self) -> str:
        head = (
            f"| layer | regime | lambda_min | lambda_max | #pos | #neg | Delta mean ({self.delta_source}) "
            "| Delta std | Delta min | Delta max |"
        )
        rows = [head, "|" + "---|" * 10]
        for item in self.layers:
            eig = item.eigenvalues
            tol = 1e-5 * float(eig.abs().max())
            rows.append(
                f"| {item.layer} | {item.regime} | {float(eig.min()):.3g} | {float(eig.max()):.3g} "
                f"| {int((eig > tol).sum())} | {int((eig < -tol).sum())} | {item.delta_mean:.4g} "
                f"| {item.delta_std:.4g} | {item.delta_min:.4g} | {item.delta_max:.4g} |"
            )
        return "\n".join(rows)


def _delta_from_inputs(model: nn.Module, mixers: list, inputs: dict) -> dict[int, Tensor]:
    """Delta ``[B*L*I]`` of every mixer on ``inputs``, captured from the output of ``x_proj``."""
    captured: dict[int, Tensor] = {}

    def make_hook(mixer: nn.Module):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            time_step = output[..., : mixer.time_step_rank]
            captured[mixer.layer_idx] = F.softplus(mixer.dt_proj(time_step)).flatten()

        return hook

    handles = [mixer.x_proj.register_forward_hook(make_hook(mixer)) for mixer in mixers]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(**inputs)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return captured


@torch.no_grad()
def analyze(
    model: nn.Module, input_ids: Tensor | None = None, rtol: float = 1e-5, **inputs: Tensor
) -> DynamicsReport:
    """Diagnose every ``MambaMixer`` of ``model`` (patched or not; any model with Mamba layers).

    Args:
        model: e.g. ``MambaModel``/``MambaForCausalLM`` (also loaded with ``from_pretrained``).
        input_ids: optional ``[B, L]`` tokens; with them Delta statistics are measured on real inputs
            (extra keyword tensors such as ``attention_mask`` are passed to the model too).
        rtol: relative tolerance of the sign test on the eigenvalues.
    """
    mixers = find_mixers(model)
    deltas: dict[int, Tensor] = {}
    if input_ids is not None:
        deltas = _delta_from_inputs(model, mixers, {"input_ids": input_ids, **inputs})
    layers = []
    for mixer in mixers:
        _, s_b, s_c = mixer.x_proj.weight.split(
            [mixer.time_step_rank, mixer.ssm_state_size, mixer.ssm_state_size], dim=0
        )
        eigenvalues = symmetric_spectrum(s_b, s_c).cpu()
        delta = deltas.get(mixer.layer_idx)
        if delta is None:
            delta = F.softplus(mixer.dt_proj.bias.float())
        delta = delta.float()
        layers.append(
            LayerDynamics(
                layer=mixer.layer_idx,
                eigenvalues=eigenvalues,
                regime=classify_spectrum(eigenvalues, rtol),
                delta_mean=float(delta.mean()),
                delta_std=float(delta.std()) if delta.numel() > 1 else 0.0,
                delta_min=float(delta.min()),
                delta_max=float(delta.max()),
            )
        )
    return DynamicsReport(layers=layers, delta_source="inputs" if deltas else "bias")
