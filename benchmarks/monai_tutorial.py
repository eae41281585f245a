"""MONAI's BraTS tutorial inference as a user runs it, in one process: the baseline of the per-case timing.

    python -m benchmarks.monai_tutorial CASE_FOLDER OUT.nii.gz

What MONAI's ``brats_segmentation_3d`` tutorial does at validation, on our
BraTS-layout case: ``LoadImaged`` of the four modalities (nibabel's (H, W, D)
voxel order, the tutorial's axis order), ``EnsureChannelFirstd``,
``Orientationd("RAS")``, ``Spacingd(1 mm)``, ``NormalizeIntensityd(nonzero,
channel_wise)``, then SegResNet (blocks 1-2-2-4 / 1-1-1, 16 initial filters) in
``sliding_window_inference`` with roi 240x240x160, sw_batch_size 1, overlap
0.5 (one window on a 240x240x155 volume), sigmoid > 0.5, and a label NIfTI
written with nibabel. The weights are untrained: this is timed, never scored.
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROI = (240, 240, 160)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.monai_tutorial", description=__doc__.split("\n\n")[0])
    parser.add_argument("case", type=Path)
    parser.add_argument("output", type=Path)
    args = parser.parse_args(argv)

    import nibabel as nib
    import numpy as np
    import torch
    from monai import transforms as T
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import SegResNet

    from napari_sevnet.io import MODALITIES, find_case_files

    _, files, _ = find_case_files(args.case)
    load = T.Compose([
        T.LoadImaged(keys="image"),
        T.EnsureChannelFirstd(keys="image"),
        T.Orientationd(keys="image", axcodes="RAS"),
        T.Spacingd(keys="image", pixdim=(1.0, 1.0, 1.0), mode="bilinear"),
        T.NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
    ])
    image = load({"image": [str(files[m]) for m in MODALITIES]})["image"]
    model = SegResNet(blocks_down=[1, 2, 2, 4], blocks_up=[1, 1, 1], init_filters=16, in_channels=4, out_channels=3, dropout_prob=0.2).eval()
    with torch.inference_mode():
        probabilities = torch.sigmoid(sliding_window_inference(image.as_tensor()[None], ROI, 1, model, overlap=0.5))[0]
    regions = (probabilities > 0.5).numpy()
    labels = np.zeros(regions.shape[1:], np.uint8)
    labels[regions[0]], labels[regions[1]], labels[regions[2]] = 2, 1, 4
    nib.save(nib.Nifti1Image(labels, image.affine.numpy()), str(args.output))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
