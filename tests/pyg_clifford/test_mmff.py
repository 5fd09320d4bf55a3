"""MMFF94 molecular dynamics of the MD17 molecules (needs RDKit) and the MD17 protocol on its output."""

from pathlib import Path

import numpy as np
import pytest

from pyg_clifford import MD17_SMILES, MD17Trajectory, simulate_mmff
from pyg_clifford.mmff import (
    BOLTZMANN_KCAL_PER_MOL_K,
    MMFFForces,
    build_molecule,
    main,
    remove_rigid_motion,
)

pytest.importorskip("rdkit")

HEAVY_ATOMS = {  # MD17's molecules: (heavy atoms, all atoms)
    "aspirin": (13, 21),
    "benzene": (6, 12),
    "ethanol": (3, 9),
    "malonaldehyde": (5, 9),
    "naphthalene": (10, 18),
    "salicylic": (10, 16),
    "toluene": (7, 15),
    "uracil": (8, 12),
}


@pytest.mark.parametrize("molecule", sorted(MD17_SMILES))
def test_molecules_have_md17_atom_counts(molecule: str) -> None:
    z = np.array([atom.GetAtomicNum() for atom in build_molecule(molecule).GetAtoms()])
    assert ((z > 1).sum(), len(z)) == HEAVY_ATOMS[molecule]


def test_forces_are_minus_the_energy_gradient_on_every_call() -> None:
    """RDKit's CalcGrad alone returns stale gradients after its first call; MMFFForces must not."""
    mol = build_molecule("ethanol")
    forces = MMFFForces(mol)
    rng = np.random.default_rng(0)
    base = mol.GetConformer().GetPositions()
    for _ in range(3):  # new positions on every call
        pos = base + 0.05 * rng.standard_normal(base.shape)
        _, force = forces(pos)
        numeric = np.zeros_like(pos)
        for index in np.ndindex(pos.shape):
            step = np.zeros_like(pos)
            step[index] = 1e-5
            numeric[index] = -(forces(pos + step)[0] - forces(pos - step)[0]) / 2e-5
        np.testing.assert_allclose(force, numeric, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("molecule", ["ethanol", "uracil"])
def test_production_run_conserves_energy_at_500_kelvin(molecule: str) -> None:
    out = simulate_mmff(molecule, 2000, seed=1, equilibration_steps=2000, progress=False)
    atoms = HEAVY_ATOMS[molecule][1]
    assert out["R"].shape == (2000, atoms, 3) and out["E"].shape == out["K"].shape == (2000,)
    drift = out["E"].std() / out["K"].mean()
    assert drift < 0.005, drift  # velocity Verlet at 0.5 fs; a stale gradient gives > 0.1
    temperature = 2 * out["K"].mean() / ((3 * atoms - 3) * BOLTZMANN_KCAL_PER_MOL_K)
    assert 350 < temperature < 650, temperature  # thermalised near 500 K (short run: wide band)
    bonds = np.linalg.norm(out["R"][:, 0] - out["R"][:, 1], axis=-1)  # the C-C bond of ethanol / C=O
    assert bonds.min() > 1.0 and bonds.max() < 1.8  # the molecule stays bonded


def angular_momentum(pos: np.ndarray, vel: np.ndarray, mass: np.ndarray) -> np.ndarray:
    r = pos - (mass * pos).sum(-2, keepdims=True) / mass.sum()
    return (mass * np.cross(r, vel)).sum(-2)


def test_remove_rigid_motion_zeroes_momentum_and_keeps_internal_motion() -> None:
    rng = np.random.default_rng(0)
    pos, internal = rng.standard_normal((2, 7, 3))
    mass = rng.uniform(1, 16, (7, 1))
    internal = remove_rigid_motion(pos, internal, mass)
    np.testing.assert_allclose((mass * internal).sum(0), 0, atol=1e-12)
    np.testing.assert_allclose(angular_momentum(pos, internal, mass), 0, atol=1e-12)
    rigid = np.array([0.3, -0.2, 0.5]) + np.cross(np.array([0.1, 0.7, -0.4]), pos)  # translation + rotation
    np.testing.assert_allclose(remove_rigid_motion(pos, internal + rigid, mass), internal, atol=1e-12)


def test_production_run_does_not_tumble() -> None:
    """Angular momentum is zeroed before NVE and conserved: finite-difference L stays ~0 in production."""
    out = simulate_mmff("uracil", 400, seed=2, equilibration_steps=500, progress=False)
    mass = np.array([atom.GetMass() for atom in build_molecule("uracil", 2).GetAtoms()])[:, None]
    vel = (out["R"][2:] - out["R"][:-2]) / 1.0  # central differences over 2 x 0.5 fs
    pos = out["R"][1:-1]
    momentum = np.linalg.norm(angular_momentum(pos, vel, mass), axis=-1)
    scale = (mass * np.linalg.norm(pos - pos.mean(-2, keepdims=True), axis=-1, keepdims=True)
             * np.linalg.norm(vel, axis=-1, keepdims=True)).sum((-2, -1))  # fmt: skip
    assert (momentum / scale).max() < 0.01
    tumbling = simulate_mmff("uracil", 400, 2, equilibration_steps=500, remove_rotation=False, progress=False)
    vel = (tumbling["R"][2:] - tumbling["R"][:-2]) / 1.0
    assert (np.linalg.norm(angular_momentum(tumbling["R"][1:-1], vel, mass), axis=-1) / scale).min() > 0.01


def test_cli_writes_a_file_the_md17_protocol_reads(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    main(["ethanol", "--frames", "400", "--equilibration", "100", "--out", str(raw)])
    saved = np.load(raw / "ethanol_mmff.npz")
    assert saved["R"].shape == (400, 9, 3) and str(saved["name"]) == "ethanol"
    kwargs = dict(num_train=20, num_val=10, num_test=10, delta_frame=30, skip=50)
    data = MD17Trajectory(str(tmp_path), "ethanol", "train", source="mmff", **kwargs)
    assert len(data) == 20 and data[0].pos.shape == (3, 3)  # C, C, O
    heavy = saved["R"][:, saved["z"] > 1].astype(np.float32)
    t = int(np.argmin(np.abs(heavy - data[0].pos.numpy()).sum(axis=(1, 2))))
    np.testing.assert_allclose(data[0].y.numpy(), heavy[t + 30])
    edges = {tuple(e) for e in data[0].edge_index.t().tolist()}
    assert edges == {(0, 1), (1, 0), (1, 2), (2, 1), (0, 2), (2, 0)}  # C-C, C-O bonds and the C..O 2-hop
    with pytest.raises(FileNotFoundError, match="python -m pyg_clifford.mmff toluene"):
        MD17Trajectory(str(tmp_path), "toluene", source="mmff")


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="Expected molecule"):
        simulate_mmff("caffeine", 10, progress=False)
    with pytest.raises(ValueError, match="num_frames >= 1"):
        simulate_mmff("ethanol", 0, progress=False)
    with pytest.raises(ValueError, match="source"):
        MD17Trajectory("unused", "ethanol", source="xtb")
