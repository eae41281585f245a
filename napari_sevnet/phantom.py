"""Deterministic synthetic BraTS-like cases for sample data, tests, demo weights and benchmarks.

A phantom is a skull-stripped brain (white matter, grey matter, ventricles)
holding one glioma: a necrotic core, an enhancing rim and surrounding edema,
with the contrasts of real scans (ET bright on T1ce, edema bright on T2 and
FLAIR, necrosis dark on T1ce, CSF bright on T2 and dark on FLAIR), a smooth
bias field, partial-volume blur and Rician-like noise. Size, shape and
position of the tumour vary with the seed; the same seed gives the same case.
Anatomy scales with the grid up to the size of an adult head
(:data:`HEAD_MM`): on the BraTS grid (155 x 240 x 240 at 1 mm) the brain is
about 110 x 170 x 135 mm, like the real cases' brain boxes; on small grids
(tests) everything shrinks with the grid.

    python -m napari_sevnet.phantom OUT --cases N --seed S [--shape Z Y X]

writes BraTS-2021-layout folders ``OUT/phantom_SSSS_NNN/`` with LPS headers as
the BraTS files have.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import io_orientation
from scipy import ndimage

from napari_sevnet.errors import InputError
from napari_sevnet.io import MODALITIES, Case, SourceGrid, atomic_write_nifti, write_mask
from napari_sevnet.regions import labels_to_regions

# mean intensity of each tissue per modality (T1, T1ce, T2, FLAIR), arbitrary units
_TISSUE = ("background", "wm", "gm", "csf", "edema", "enhancing", "necrosis")
_CONTRAST = np.array(
    [
        [0.00, 0.00, 0.00, 0.00],  # background
        [0.85, 0.85, 0.42, 0.50],  # white matter
        [0.62, 0.64, 0.58, 0.62],  # grey matter
        [0.22, 0.22, 1.20, 0.15],  # CSF / ventricles
        [0.52, 0.55, 1.00, 1.15],  # edema
        [0.60, 1.35, 0.78, 0.95],  # enhancing tumour
        [0.34, 0.28, 1.10, 0.75],  # necrotic core
    ],
    dtype=np.float32,
)
BRATS_LPS_AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])
#: (Z, Y, X) field of view in mm that an adult head fills; larger grids get a head of this size, centred
HEAD_MM = (186.0, 205.0, 189.0)


@dataclass
class Phantom:
    image: np.ndarray  # (4, Z, Y, X) float32, MODALITIES order
    labels: np.ndarray  # (Z, Y, X) uint8, BraTS 2021 labels
    spacing: tuple[float, float, float]

    @property
    def regions(self) -> np.ndarray:
        return labels_to_regions(self.labels, "brats2021")


def _smooth_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field / (field.std() + 1e-8)


def make_phantom(seed: int = 0, shape: tuple[int, int, int] = (96, 96, 96), *, contrast: float = 1.0, noise: float = 0.04) -> Phantom:
    """One synthetic case of ``shape`` (Z, Y, X) at 1 mm; ``contrast`` < 1 makes the tumour subtler."""
    rng = np.random.default_rng(seed)
    z, y, x = (np.arange(n, dtype=np.float32) for n in shape)
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    centre = np.array(shape, dtype=np.float32) / 2
    head = np.minimum(np.array(shape, dtype=np.float64), HEAD_MM)  # the anatomy's scale (1 mm voxels)
    radii = head * np.array([0.36, 0.42, 0.36]) * rng.uniform(0.92, 1.04, 3)
    coarse = max(head.min() / 16, 2.0)

    # brain: a wobbly ellipsoid; cortex (GM) as its outer shell; ventricles as two ellipsoids
    rho = np.sqrt(((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2 + ((xx - centre[2]) / radii[2]) ** 2)
    rho = rho + 0.04 * _smooth_noise(rng, shape, coarse)
    tissue = np.zeros(shape, dtype=np.uint8)
    tissue[rho < 1.0] = 2
    tissue[rho < 0.82 + 0.05 * _smooth_noise(rng, shape, coarse / 2)] = 1
    for side in (-1, 1):
        vc = centre + np.array([0.05, -0.05, side * 0.12]) * head
        vr = head * np.array([0.12, 0.18, 0.045])
        vent = ((zz - vc[0]) / vr[0]) ** 2 + ((yy - vc[1]) / vr[1]) ** 2 + ((xx - vc[2]) / vr[2]) ** 2
        tissue[vent < 1.0] = 3

    # tumour inside the brain, away from the midline: edema > enhancing rim > necrosis
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    scale = head.min()
    t_radius = scale * rng.uniform(0.08, 0.15)
    t_centre = centre + direction * radii * rng.uniform(0.15, 0.45)
    dist = np.sqrt((zz - t_centre[0]) ** 2 + (yy - t_centre[1]) ** 2 + (xx - t_centre[2]) ** 2) / t_radius
    dist = dist * (1 + 0.18 * _smooth_noise(rng, shape, max(scale / 24, 1.5)))
    brain = tissue > 0
    core = (dist < 1.0) & brain
    necrosis = (dist < rng.uniform(0.45, 0.75)) & brain
    edema_extent = rng.uniform(1.3, 1.9)
    edema = (dist * (1 + 0.2 * _smooth_noise(rng, shape, coarse)) < edema_extent) & brain & (tissue != 3)
    components, _ = ndimage.label(edema | core)
    edema &= np.isin(components, np.unique(components[core]))  # no detached islands
    labels = np.zeros(shape, dtype=np.uint8)
    labels[edema] = 2
    labels[core] = 4
    labels[necrosis] = 1
    tissue[edema] = 4
    tissue[core] = 5
    tissue[necrosis] = 6

    # intensities: tissue means (tumour contrast scaled towards white matter), texture, blur, bias, noise
    means = _CONTRAST.copy()
    means[4:] = means[1] + contrast * (means[4:] - means[1])
    image = means[tissue].transpose(3, 0, 1, 2).copy()
    for c in range(4):
        texture = 1 + 0.03 * _smooth_noise(rng, shape, 1.0)
        image[c] = ndimage.gaussian_filter(image[c] * texture, 0.6)
        bias = np.exp(0.12 * _smooth_noise(rng, shape, scale / 4))
        noisy = np.abs(image[c] * bias + noise * rng.standard_normal(shape) + 1j * noise * rng.standard_normal(shape))
        image[c] = np.where(brain, noisy, 0) * rng.uniform(400, 1200)
    return Phantom(image=image.astype(np.float32), labels=labels, spacing=(1.0, 1.0, 1.0))


def phantom_case(seed: int = 0, shape=(96, 96, 96), case_id: str | None = None, **kwargs) -> Case:
    """A phantom as an in-memory :class:`Case` on an LPS grid like the BraTS files."""
    p = make_phantom(seed, shape, **kwargs)
    # the arrays are defined on the canonical (Z, Y, X) grid; the file grid is LPS (i, j, k)
    grid = SourceGrid(affine=BRATS_LPS_AFFINE.copy(), shape=tuple(shape[::-1]), orientation=io_orientation(BRATS_LPS_AFFINE))
    return Case(case_id=case_id or f"phantom_{seed:04d}", image=p.image, grid=grid, paths={}, regions=p.regions, label_convention="brats2021", layout="phantom")


def write_phantom(folder: str | Path, seed: int = 0, shape=(96, 96, 96), case_id: str | None = None, **kwargs) -> Path:
    """Write one phantom as a BraTS-2021-layout folder (int16 modalities, LPS header)."""
    case = phantom_case(seed, shape, case_id, **kwargs)
    folder = Path(folder) / case.case_id
    for i, m in enumerate(MODALITIES):
        data = np.rint(case.grid.from_canonical(case.image[i])).astype(np.int16)
        atomic_write_nifti(nib.Nifti1Image(data, case.grid.affine), folder / f"{case.case_id}_{m}.nii.gz")
    write_mask(case.regions, case.grid, folder / f"{case.case_id}_seg.nii.gz", "brats2021")
    return folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m napari_sevnet.phantom", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write the case folders into")
    parser.add_argument("--cases", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="seed of the first case; case k uses seed+k")
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 96, 96), metavar=("Z", "Y", "X"))
    parser.add_argument("--contrast", type=float, default=1.0, help="tumour contrast (1 = clear, 0.3 = subtle)")
    args = parser.parse_args(argv)
    try:
        for k in range(args.cases):
            print(write_phantom(args.out, args.seed + k, tuple(args.shape), contrast=args.contrast))
    except InputError as exc:
        print(f"phantom: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
