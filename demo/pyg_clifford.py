"""pyg_clifford tour: the algebra, an equivariance check, k-hop expressivity, and a short n-body run."""

import math
import tempfile

import torch

from pyg_clifford import CGEGNN, CGConv, CliffordAlgebra, KHopPaths, NBody, khop_paths
from pyg_clifford import train as train_cli

from .checks import expect


def algebra_tour() -> None:
    algebra = CliffordAlgebra((1.0, 1.0, 1.0))
    print("Cl(3,0) blades:", algebra.blade_names)
    e1, e2 = algebra.embed_vector(torch.eye(3)[:2]).unbind(0)
    print("e1 e2 =", dict(zip(algebra.blade_names, algebra.geometric_product(e1, e2).tolist(), strict=True)))
    quarter_turn = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    versor = algebra.versor_from_orthogonal(quarter_turn)
    bivector = algebra.geometric_product(e1, algebra.embed_vector(torch.tensor([0.0, 0.0, 1.0])))  # e13
    turned = algebra.versor_action(versor, bivector)
    image = algebra.blade_names[int(turned.abs().argmax())]
    print("a quarter turn about e3 maps e13 to", image, "(e23 expected)")
    expect(image == "e23", "a quarter turn about e3 maps e13 to e23")


def equivariance_check() -> None:
    torch.manual_seed(0)
    model = CGEGNN(1, 1, hidden_channels=8, num_layers=2, hops=2).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    edge_index = torch.nonzero(~torch.eye(5, dtype=torch.bool)).t()
    pos, vel, charge = torch.randn(5, 3).double(), torch.randn(5, 3).double(), torch.randn(5, 1).double()
    edge_attr = charge[edge_index[0]] * charge[edge_index[1]]
    rotation, _ = torch.linalg.qr(torch.randn(3, 3).double())
    rotation[:, 0] *= -torch.linalg.det(rotation)  # a reflection: det = -1
    shift = torch.randn(3).double()
    pred = model(pos, edge_index, vel, charge, edge_attr)[0]
    moved = model(pos @ rotation.T + shift, edge_index, vel @ rotation.T, charge, edge_attr)[0]
    error = (moved - (pred @ rotation.T + shift)).abs().max()
    print(f"CGEGNN(hops=2) under a random reflection + translation: max error {error:.1e}")
    expect(error < 1e-10, "CGEGNN is E(3)-equivariant")


def expressivity_check() -> None:
    """Square-planar vs tetrahedral 4-stars: equal arm lengths, arm vectors summing to zero in both."""
    algebra = CliffordAlgebra((1.0, 1.0, 1.0)).double()
    tetra = math.acos(-1 / 3)
    angles = {
        "planar": [(math.pi / 2, k * math.pi / 2) for k in range(4)],
        "tetrahedral": [(0.0, 0.0)] + [(tetra, k * 2 * math.pi / 3) for k in range(3)],
    }
    stars = {
        name: torch.tensor(
            [[0.0, 0.0, 0.0]]
            + [[math.sin(t) * math.cos(p), math.sin(t) * math.sin(p), math.cos(t)] for t, p in a],
            dtype=torch.float64,
        )
        for name, a in angles.items()
    }
    leaves = torch.arange(1, 5)
    edge_index = torch.cat([torch.stack([0 * leaves, leaves]), torch.stack([leaves, 0 * leaves])], dim=1)
    x = algebra.embed_scalar(torch.ones(5, 1)).double()
    for hops in (1, 2):
        torch.manual_seed(0)
        convs = [CGConv(1 if i == 0 else 4, 4, algebra, hops=hops).double() for i in range(2)]
        paths = khop_paths(edge_index, 5, hops)
        outs = {
            n: convs[1](convs[0](x, edge_index, p, paths=paths), edge_index, p, paths=paths)
            for n, p in stars.items()
        }
        gap = (outs["planar"][..., 0] - outs["tetrahedral"][..., 0]).abs().max()
        print(f"two CGConv layers, hops={hops}: invariant gap between the two stars = {gap:.2e}")
        verb = "separates" if hops == 2 else "cannot separate"
        expect((gap > 1e-6) == (hops == 2), f"hops={hops} {verb} the two stars")


def nbody_run() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sizes = ["--num-train", "200", "--num-val", "100", "--num-test", "100", "--root", f"{tmp}/data"]
        test = NBody(f"{tmp}/data", "test", 200, 100, 100)
        identity = float(sum(((d.pos - d.y) ** 2).mean() for d in test) / len(test))
        linear = float(sum(((d.pos + d.vel - d.y) ** 2).mean() for d in test) / len(test))
        print(f"n-body test MSE of x30 -> x40 baselines: identity {identity:.4f}, x + v t {linear:.4f}")
        print("example graph with 2-hop paths:", KHopPaths(2)(test[0]))
        for hops in (1, 2):
            argv = ["nbody", "--hops", str(hops), "--epochs", "6", "--hidden", "8", "--layers", "2"]
            result = train_cli.main([*argv, *sizes, "--out", f"{tmp}/h{hops}", "--quiet"])
            print(f"CG-EGNN hops={hops}: test MSE {result['test_mse']:.4f} ({result['train_seconds']:.0f}s)")


def main() -> None:
    torch.set_num_threads(1)
    algebra_tour()
    equivariance_check()
    expressivity_check()
    nbody_run()


if __name__ == "__main__":
    main()
