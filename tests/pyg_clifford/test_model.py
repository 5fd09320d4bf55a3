"""CGEGNN symmetries, and the NBody simulator and dataset."""

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.loader import DataLoader

from pyg_clifford import CGEGNN, KHopPaths, NBody, simulate_charged
from pyg_clifford.nbody import coulomb_forces
from pyg_clifford.testing import random_orthogonal


def fully_connected(num_nodes: int) -> torch.Tensor:
    src, dst = torch.nonzero(~torch.eye(num_nodes, dtype=torch.bool)).t()
    return torch.stack([src, dst])


def model_inputs(num_nodes: int, hops: int, generator: torch.Generator):
    edge_index = fully_connected(num_nodes)
    pos, vel = torch.randn(2, num_nodes, 3, dtype=torch.float64, generator=generator)
    charge = torch.randn(num_nodes, 1, dtype=torch.float64, generator=generator)
    edge_attr = charge[edge_index[0]] * charge[edge_index[1]]
    paths = KHopPaths(hops)(Data(edge_index=edge_index, num_nodes=num_nodes))
    path_list = [paths[f"path{k}_index"] for k in range(2, hops + 1)]
    return pos, vel, charge, edge_index, edge_attr, path_list


def trained_like(model: CGEGNN) -> CGEGNN:
    with torch.no_grad():  # the readout starts at zero; make every parameter non-trivial
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("hops", [1, 2, 3])
@pytest.mark.parametrize("reflect", [False, True])
def test_cgegnn_is_e3_equivariant(hops: int, reflect: bool) -> None:
    generator = torch.Generator().manual_seed(hops + 7 * reflect)
    model = trained_like(CGEGNN(1, 1, hidden_channels=6, num_layers=2, hops=hops, out_scalars=2).double())
    pos, vel, charge, edge_index, edge_attr, paths = model_inputs(5, hops, generator)
    pred, node_out, graph_out = model(pos, edge_index, vel, charge, edge_attr, paths=paths)
    assert (pred - pos).abs().max() > 1e-3
    rotation = random_orthogonal(3, generator, reflect)
    shift = torch.randn(3, dtype=torch.float64, generator=generator)
    moved = model(pos @ rotation.T + shift, edge_index, vel @ rotation.T, charge, edge_attr, paths=paths)
    torch.testing.assert_close(moved[0], pred @ rotation.T + shift, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(moved[1], node_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(moved[2], graph_out, atol=1e-5, rtol=1e-5)


def test_cgegnn_is_permutation_equivariant() -> None:
    generator = torch.Generator().manual_seed(1)
    model = trained_like(CGEGNN(1, 1, hidden_channels=6, num_layers=2, hops=2, out_scalars=1).double())
    pos, vel, charge, edge_index, edge_attr, _ = model_inputs(6, 2, generator)
    pred, node_out, graph_out = model(pos, edge_index, vel, charge, edge_attr)
    perm = torch.randperm(6, generator=generator)
    inverse = torch.argsort(perm)
    edge_perm = inverse[edge_index]  # node perm[i] becomes node i
    permuted = model(pos[perm], edge_perm, vel[perm], charge[perm], edge_attr)
    torch.testing.assert_close(permuted[0], pred[perm])
    torch.testing.assert_close(permuted[1], node_out[perm])
    torch.testing.assert_close(permuted[2], graph_out)


def test_cgegnn_checks_its_inputs() -> None:
    model = CGEGNN(1, 1, hidden_channels=4, num_layers=1)
    edge_index = fully_connected(4)
    with pytest.raises(ValueError, match=r"\[num_nodes, 3\]"):
        model(torch.randn(4, 2), edge_index, torch.randn(4, 2), torch.randn(4, 1), torch.randn(12, 1))
    with pytest.raises(ValueError, match=r"node_attr of shape \[4, 1\]"):
        model(torch.randn(4, 3), edge_index, torch.randn(4, 3), None, torch.randn(12, 1))
    with pytest.raises(ValueError, match=r"vel of shape \(4, 3\)"):
        model(torch.randn(4, 3), edge_index, None, torch.randn(4, 1), torch.randn(12, 1))


def test_forces_match_pairwise_loop() -> None:
    rng = np.random.default_rng(0)
    loc, charges = rng.standard_normal((3, 4, 3)), rng.choice([-1.0, 1.0], size=(3, 4))
    forces = coulomb_forces(loc, charges, max_force=np.inf)
    for s in range(3):
        for i in range(4):
            expected = sum(
                charges[s, i]
                * charges[s, j]
                * (loc[s, i] - loc[s, j])
                / np.linalg.norm(loc[s, i] - loc[s, j]) ** 3
                for j in range(4)
                if j != i
            )
            np.testing.assert_allclose(forces[s, i], expected, rtol=1e-10)
    np.testing.assert_allclose(forces.sum(1), 0.0, atol=1e-9)  # Newton's third law
    assert np.abs(coulomb_forces(loc * 1e-3, charges)).max() <= 100.0


def test_free_particle_frames_follow_the_recording_schedule() -> None:
    """One particle feels no force: frame f is x0 + v (f + 1) * sample_every * dt."""
    locs, vels, _ = simulate_charged(
        2, num_particles=1, num_frames=5, sample_every=10, seed=3, progress=False
    )
    steps = 10 * (np.arange(5) + 1) * 0.001
    np.testing.assert_allclose(
        locs[:, :, 0] - locs[:, :1, 0], (steps - steps[0])[None, :, None] * vels[:, :1, 0]
    )
    np.testing.assert_allclose(np.linalg.norm(vels[:, 0, 0], axis=-1), 0.5)


def test_nbody_dataset_is_cached_and_batches_paths(tmp_path, monkeypatch) -> None:
    train = NBody(str(tmp_path), "train", num_train=6, num_val=3, num_test=2, progress=False)
    assert [len(NBody(str(tmp_path), s, 6, 3, 2, progress=False)) for s in ("train", "val", "test")] == [
        6,
        3,
        2,
    ]
    first = train[0]
    assert first.pos.shape == (5, 3) and first.edge_index.shape == (2, 20) and first.y.shape == (5, 3)
    torch.testing.assert_close(
        first.edge_attr[:, 0], (first.charge[first.edge_index[0]] * first.charge[first.edge_index[1]])[:, 0]
    )

    def fail(*args, **kwargs):
        raise AssertionError("the cached data should be loaded, not simulated again")

    monkeypatch.setattr("pyg_clifford.nbody.simulate_charged", fail)
    again = NBody(str(tmp_path), "train", num_train=6, num_val=3, num_test=2, progress=False)
    torch.testing.assert_close(again[0].pos, first.pos)

    transform = KHopPaths(2)
    graphs = [transform(d) for d in again]
    batch = next(iter(DataLoader(graphs, batch_size=3)))
    model = trained_like(CGEGNN(1, 1, hidden_channels=4, num_layers=1, hops=2))

    def run(d):
        return model(d.pos, d.edge_index, d.vel, d.charge, d.edge_attr, d.batch, [d.path2_index])[0]

    torch.testing.assert_close(
        run(batch), torch.cat([run(Batch.from_data_list([g])) for g in graphs[:3]]), atol=1e-5, rtol=1e-5
    )


def test_nbody_validation_and_test_sets_do_not_depend_on_num_train(tmp_path) -> None:
    def split(num_train: int, name: str, seed: int = 0) -> torch.Tensor:
        data = NBody(str(tmp_path), name, num_train, 4, 3, seed=seed, progress=False)
        return torch.stack([torch.cat([d.pos, d.vel, d.y, d.charge], dim=-1) for d in data])

    for name in ("val", "test"):
        torch.testing.assert_close(split(5, name), split(9, name), rtol=0, atol=0)
    assert not torch.equal(split(5, "test"), split(5, "test", seed=1))
    small, large = split(5, "train"), split(9, "train")
    assert small.shape[0] == 5 and large.shape[0] == 9
    assert not torch.equal(small, large[:5])  # train draws from its own stream with its own size
    assert not torch.equal(split(5, "val")[:3], split(5, "test"))

    # the test split is the simulation of the third child stream, independent of the other sizes
    stream = np.random.SeedSequence(0).spawn(3)[2]
    locs, vels, charges = simulate_charged(3, num_frames=41, seed=stream, progress=False)
    test = NBody(str(tmp_path), "test", 5, 4, 3, progress=False)
    torch.testing.assert_close(test[1].pos, torch.from_numpy(locs[1, 30]).float())
    torch.testing.assert_close(test[1].y, torch.from_numpy(locs[1, 40]).float())
    torch.testing.assert_close(test[1].vel, torch.from_numpy(vels[1, 30]).float())
    torch.testing.assert_close(test[1].charge[:, 0], torch.from_numpy(charges[1]).float())


def test_nbody_only_simulates_the_split_whose_size_changed(tmp_path, monkeypatch) -> None:
    NBody(str(tmp_path), "train", 5, 4, 3, progress=False)
    sizes = []
    original = simulate_charged

    def counting(num_sims, *args, **kwargs):
        sizes.append(num_sims)
        return original(num_sims, *args, **kwargs)

    monkeypatch.setattr("pyg_clifford.nbody.simulate_charged", counting)
    NBody(str(tmp_path), "test", 7, 4, 3, progress=False)
    assert sizes == [7]
