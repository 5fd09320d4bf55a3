"""Simulator of the continuous-time token dynamics of a selective state-space layer (small dimensions).

Depth is time; token ``l`` of a length-``L`` sequence in ``R^D`` moves as

.. math::
    \\dot x_l = \\sum_{j \\le l} P_{lj} x_j, \\qquad
    P_{lj} = (x_l^\\top S_C^\\top S_B x_j)\\, \\Delta(x_j)\\, e^{-a \\sum_{k=j+1}^{l} \\Delta(x_k)}, \\qquad
    \\Delta(x) = \\operatorname{softplus}(s_\\Delta^\\top x + b),

with a scalar step ``Delta`` and decay ``a > 0`` (the simplification of the paper). The right-hand side is
vectorised over tokens (an ``L x L`` matrix per evaluation); integration is RK4 with a step that bounds the
relative change of every token, and stops once a token blows up.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class Trajectory:
    """Token norms over time: ``times [T]``, ``norms [T, L]``; ``blew_up`` if the run stopped on a blow-up."""

    times: Tensor
    norms: Tensor
    blew_up: bool

    def verdict(self, growth: float = 10.0, shrink: float = 0.5) -> str:
        """``divergent`` if a token's norm grew ``growth``-fold (or blew up), ``convergent`` if every norm
        decreased and the largest fell below ``shrink`` times the largest start, else ``undecided``."""
        start, end = self.norms[0], self.norms[-1]
        if self.blew_up or bool((self.norms.max(0).values > growth * start).any()):
            return "divergent"
        if bool((end < start).all()) and float(end.max()) < shrink * float(start.max()):
            return "convergent"
        return "undecided"


@dataclass
class TokenDynamics:
    """Parameters of the simulated layer.

    Args:
        s_b, s_c: ``[N, D]`` selective projections.
        s_delta: ``[D]`` step projection; ``delta_bias`` its bias.
        a: decay rate (> 0).
    """

    s_b: Tensor
    s_c: Tensor
    s_delta: Tensor
    delta_bias: float = 0.0
    a: float = 1.0

    def __post_init__(self) -> None:
        shapes_ok = self.s_b.shape == self.s_c.shape and self.s_delta.shape == self.s_b.shape[1:]
        if self.s_b.dim() != 2 or not shapes_ok:
            raise ValueError(
                f"expected s_b, s_c of shape [N, D] and s_delta of shape [D], got {tuple(self.s_b.shape)}, "
                f"{tuple(self.s_c.shape)}, {tuple(self.s_delta.shape)}"
            )
        if self.a <= 0:
            raise ValueError(f"the decay a must be positive, got {self.a}")

    @classmethod
    @torch.no_grad()
    def from_mixer(cls, mixer: torch.nn.Module) -> "TokenDynamics":
        """Dynamics of a ``MambaMixer`` with Delta and ``a`` averaged over channels (``D = I``)."""
        rank, n = mixer.time_step_rank, mixer.ssm_state_size
        s_dt, s_b, s_c = mixer.x_proj.weight.double().split([rank, n, n], dim=0)
        return cls(
            s_b=s_b.clone(),
            s_c=s_c.clone(),
            s_delta=mixer.dt_proj.weight.double().mean(0) @ s_dt,
            delta_bias=float(mixer.dt_proj.bias.double().mean()),
            a=float(mixer.A_log.double().exp().mean()),
        )

    @property
    def interaction(self) -> Tensor:
        """``S_C^T S_B`` of shape ``[D, D]``."""
        return self.s_c.transpose(0, 1) @ self.s_b

    def velocity(self, x: Tensor) -> Tensor:
        """Right-hand side ``[L, D]`` for tokens ``x [L, D]``."""
        length = x.shape[0]
        quad = x @ self.interaction.to(x) @ x.transpose(0, 1)  # [L, L]: x_l^T S_C^T S_B x_j
        delta = F.softplus(x @ self.s_delta.to(x) + self.delta_bias)  # [L]
        cum = delta.cumsum(0)
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        exponent = torch.where(causal, -self.a * (cum[:, None] - cum[None, :]), -torch.inf)
        return (quad * delta[None, :] * exponent.exp()) @ x

    @torch.no_grad()
    def simulate(
        self, x0: Tensor, t_max: float = 50.0, max_rel_step: float = 0.02, max_steps: int = 20000,
        blowup: float = 1e3,
    ) -> Trajectory:
        """Integrate from ``x0 [L, D]`` up to ``t_max`` (float64 RK4 with adaptive step).

        The step is ``max_rel_step * max_l |x_l| / max_l |v_l|``, capped so that ``t_max`` takes at least
        100 steps; integration stops when a norm exceeds ``blowup`` times the largest initial norm.
        """
        if x0.dim() != 2 or x0.shape[1] != self.s_b.shape[1]:
            raise ValueError(f"expected x0 of shape [L, {self.s_b.shape[1]}], got {tuple(x0.shape)}")
        x = x0.double()
        limit = blowup * float(x.norm(dim=1).max())
        times, norms = [0.0], [x.norm(dim=1)]
        t, blew_up = 0.0, False
        for _ in range(max_steps):
            if t >= t_max:
                break
            v = self.velocity(x)
            rate = float(v.norm(dim=1).max() / x.norm(dim=1).max().clamp_min(1e-300))
            h = min(max_rel_step / max(rate, 1e-12), t_max / 100, t_max - t)
            k2 = self.velocity(x + 0.5 * h * v)
            k3 = self.velocity(x + 0.5 * h * k2)
            k4 = self.velocity(x + h * k3)
            x = x + h / 6 * (v + 2 * k2 + 2 * k3 + k4)
            t += h
            times.append(t)
            norms.append(x.norm(dim=1))
            if not bool(torch.isfinite(x).all()) or float(norms[-1].max()) > limit:
                blew_up = True
                break
        return Trajectory(torch.tensor(times), torch.stack(norms), blew_up)


def plot_token_norms(trajectory: Trajectory, path: str | Path, title: str = "token norms") -> Path:
    """Save a log-scale plot of every token's norm over time to ``path`` (Agg backend) and return the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(trajectory.times.numpy(), trajectory.norms.numpy(), linewidth=1)
    ax.set(xlabel="time (depth)", ylabel="|x_l|", yscale="log", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
