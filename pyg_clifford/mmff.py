r"""Molecular dynamics of the MD17 molecules under RDKit's MMFF94 force field, written in the sGDML layout.

A classical stand-in for MD17 (which cannot be downloaded here): the same molecules, temperature (500 K) and
time step (0.5 fs), but MMFF94 energies instead of DFT. Needs RDKit (``pip install "symrobust[mmff]"``).

    python -m pyg_clifford.mmff aspirin ethanol --frames 50000 --out data/md17/raw

writes ``data/md17/raw/{molecule}_mmff.npz`` (keys ``R, z, E, K, name, theory``), which
:class:`~pyg_clifford.MD17Trajectory` reads with ``source="mmff"``.
"""

import argparse
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

MD17_SMILES = {
    "aspirin": "CC(=O)Oc1ccccc1C(=O)O",
    "benzene": "c1ccccc1",
    "ethanol": "CCO",
    "malonaldehyde": "OC=CC=O",
    "naphthalene": "c1ccc2ccccc2c1",
    "salicylic": "OC(=O)c1ccccc1O",
    "toluene": "Cc1ccccc1",
    "uracil": "O=c1cc[nH]c(=O)[nH]1",
}
"""SMILES of the MD17 molecules (``salicylic`` is salicylic acid, MD17's file name)."""

KCAL_PER_MOL_TO_AMU_A2_PER_FS2 = 4.184e-4
"""1 kcal/mol = 4.184e-4 amu A^2 / fs^2, so a gradient in kcal/mol/A over a mass in amu is in A / fs^2."""
BOLTZMANN_KCAL_PER_MOL_K = 0.0019872041


def remove_rigid_motion(pos: np.ndarray, vel: np.ndarray, mass: np.ndarray) -> np.ndarray:
    r"""Velocities without centre-of-mass motion and without rigid rotation: subtract :math:`v_{cm}` and
    :math:`\omega \times r` with :math:`\omega = I^{-1} L` (inertia tensor :math:`I` and angular momentum
    :math:`L` about the centre of mass). ``pos, vel [atoms, 3]``, ``mass [atoms, 1]``."""
    vel = vel - (mass * vel).sum(0) / mass.sum()
    r = pos - (mass * pos).sum(0) / mass.sum()
    momentum = (mass * np.cross(r, vel)).sum(0)
    outer = (r**2).sum(-1)[:, None, None] * np.eye(3) - r[:, :, None] * r[:, None, :]  # [atoms, 3, 3]
    inertia = (mass[:, :, None] * outer).sum(0)
    return vel - np.cross(np.linalg.solve(inertia, momentum), r)


class MMFFForces:
    r"""Energy (kcal/mol) and forces (kcal/mol/A) of one molecule under MMFF94 at positions ``[atoms, 3]``.

    RDKit's ``ForceField.CalcGrad(pos)`` is correct only on its first call: later calls at new positions
    return a stale gradient unless ``CalcEnergy`` is evaluated at the same positions first. :meth:`__call__`
    always evaluates the energy first (tested against finite differences).
    """

    def __init__(self, mol) -> None:
        from rdkit.Chem import AllChem

        properties = AllChem.MMFFGetMoleculeProperties(mol)
        if properties is None:
            raise ValueError("RDKit has no MMFF94 parameters for this molecule")
        self.force_field = AllChem.MMFFGetMoleculeForceField(mol, properties)

    def __call__(self, pos: np.ndarray) -> tuple[float, np.ndarray]:
        """Returns the potential energy and the forces ``-dE/dx [atoms, 3]``."""
        flat = pos.ravel().tolist()
        energy = self.force_field.CalcEnergy(flat)  # must precede CalcGrad at these positions (see above)
        return energy, -np.asarray(self.force_field.CalcGrad(flat)).reshape(pos.shape)


def build_molecule(molecule: str, seed: int = 0):
    """RDKit molecule with hydrogens and one MMFF-optimised ETKDG conformer, from :data:`MD17_SMILES`."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    if molecule not in MD17_SMILES:
        raise ValueError(f"Expected molecule in {sorted(MD17_SMILES)}, got {molecule!r}")
    mol = Chem.AddHs(Chem.MolFromSmiles(MD17_SMILES[molecule]))
    parameters = AllChem.ETKDGv3()
    parameters.randomSeed = seed
    if AllChem.EmbedMolecule(mol, parameters) != 0:
        raise RuntimeError(f"RDKit could not embed {molecule} with seed {seed}")
    AllChem.MMFFOptimizeMolecule(mol)
    return mol


def simulate_mmff(
    molecule: str,
    num_frames: int,
    seed: int = 0,
    dt: float = 0.5,
    temperature: float = 500.0,
    equilibration_steps: int = 4000,
    friction: float = 0.01,
    record_every: int = 1,
    remove_rotation: bool = True,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    r"""Molecular dynamics of an MD17 molecule under MMFF94: Langevin equilibration, then NVE production.

    Units: positions in Angstrom, time in fs, masses in amu, energies in kcal/mol. Velocities start from the
    Maxwell-Boltzmann distribution at ``temperature`` (centre-of-mass motion removed); ``equilibration_steps``
    of Langevin dynamics (BAOAB splitting, friction :math:`\gamma` = ``friction`` per fs) thermalise the
    molecule; with ``remove_rotation`` the total linear and angular momentum are then set to zero (both are
    conserved in NVE, so the molecule neither drifts nor tumbles: the trajectory is internal motion), and
    velocity Verlet without a thermostat records ``num_frames`` frames, one every
    ``record_every`` steps of ``dt`` fs (MD17: every 0.5 fs step):

    .. math::
        v \leftarrow v + \tfrac{\Delta t}{2} a(x), \quad x \leftarrow x + \Delta t\, v, \quad
        v \leftarrow v + \tfrac{\Delta t}{2} a(x), \qquad a = -\nabla E / m.

    Returns a dict in the sGDML layout: ``R [T, atoms, 3]`` (Angstrom), ``z [atoms]``, total energy
    ``E [T]`` and kinetic energy ``K [T]`` (kcal/mol). The total energy is conserved in production up to
    the integration error (``std(E) / mean(K)`` about 0.002 at 0.5 fs).
    """
    if num_frames < 1 or record_every < 1 or equilibration_steps < 0:
        raise ValueError(
            f"Expected num_frames >= 1, record_every >= 1, equilibration_steps >= 0, got {num_frames}, "
            f"{record_every}, {equilibration_steps}"
        )
    mol = build_molecule(molecule, seed)
    forces = MMFFForces(mol)
    z = np.array([atom.GetAtomicNum() for atom in mol.GetAtoms()])
    mass = np.array([atom.GetMass() for atom in mol.GetAtoms()])[:, None]  # [atoms, 1], amu
    to_acc = KCAL_PER_MOL_TO_AMU_A2_PER_FS2 / mass
    kt = BOLTZMANN_KCAL_PER_MOL_K * temperature * KCAL_PER_MOL_TO_AMU_A2_PER_FS2  # amu A^2 / fs^2
    rng = np.random.default_rng(seed)

    pos = mol.GetConformer().GetPositions()
    vel = rng.standard_normal(pos.shape) * np.sqrt(kt / mass)
    vel -= (mass * vel).sum(0) / mass.sum()
    energy, force = forces(pos)

    decay = np.exp(-friction * dt)
    noise = np.sqrt((1 - decay**2) * kt / mass)
    bar = tqdm(
        total=equilibration_steps + num_frames * record_every,
        desc=f"{molecule} MMFF94",
        disable=not progress,
        mininterval=1.0,
    )
    for _ in range(equilibration_steps):  # BAOAB Langevin
        vel += 0.5 * dt * force * to_acc
        pos = pos + 0.5 * dt * vel
        vel = decay * vel + noise * rng.standard_normal(pos.shape)
        pos = pos + 0.5 * dt * vel
        energy, force = forces(pos)
        vel += 0.5 * dt * force * to_acc
        bar.update()

    if remove_rotation:
        vel = remove_rigid_motion(pos, vel, mass)
    frames = np.empty((num_frames, *pos.shape))
    total, kinetic = np.empty(num_frames), np.empty(num_frames)
    for frame in range(num_frames):
        for _ in range(record_every):  # velocity Verlet (NVE)
            vel += 0.5 * dt * force * to_acc
            pos = pos + dt * vel
            energy, force = forces(pos)
            vel += 0.5 * dt * force * to_acc
        bar.update(record_every)
        frames[frame] = pos
        kinetic[frame] = 0.5 * float((mass * vel**2).sum()) / KCAL_PER_MOL_TO_AMU_A2_PER_FS2
        total[frame] = energy + kinetic[frame]
    bar.close()
    return {"R": frames, "z": z, "E": total, "K": kinetic}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pyg_clifford.mmff",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("molecules", nargs="+", choices=sorted(MD17_SMILES), metavar="MOLECULE",
                        help=f"one or more of {', '.join(sorted(MD17_SMILES))}")  # fmt: skip
    parser.add_argument("--frames", type=int, default=50_000, help="production frames to record")
    parser.add_argument("--record-every", type=int, default=1, help="MD steps per recorded frame")
    parser.add_argument("--dt", type=float, default=0.5, help="time step in fs")
    parser.add_argument("--temperature", type=float, default=500.0, help="thermostat temperature in K")
    parser.add_argument("--equilibration", type=int, default=4000, help="Langevin steps before production")
    parser.add_argument("--seed", type=int, default=0, help="conformer embedding and velocity seed")
    parser.add_argument(
        "--keep-rotation", action="store_true", help="keep the thermal rotation (default: zero L before NVE)"
    )
    parser.add_argument("--out", default="data/md17/raw", help="directory for {molecule}_mmff.npz")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for molecule in args.molecules:
        path = out / f"{molecule}_mmff.npz"
        if path.exists() and not args.force:
            print(f"{path} exists, skipped (--force to overwrite)")
            continue
        result = simulate_mmff(
            molecule,
            args.frames,
            args.seed,
            dt=args.dt,
            temperature=args.temperature,
            equilibration_steps=args.equilibration,
            record_every=args.record_every,
            remove_rotation=not args.keep_rotation,
        )
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **result, name=np.array(molecule), theory=np.array("MMFF94 (RDKit), classical"))
        tmp.replace(path)
        drift = result["E"].std() / result["K"].mean()
        frames, atoms = result["R"].shape[:2]
        print(f"{path}: {frames} frames, {atoms} atoms, std(E)/<K> = {drift:.4f}")


if __name__ == "__main__":
    main()
