"""napari-sevnet: SEV-Net brain-tumour segmentation of multi-modal MRI for napari.

The library (io, regions, model, inference, metrics) imports without Qt; the
widgets under ``napari_sevnet.widgets`` are the only Qt code.
"""

import os

# PyTorch's CPU tensors of a 3D network are tens of MB each; without transparent huge pages the
# kernel zero-fills them 4 KiB at a time on every pass (half the CPU time went to the system). With
# them a 96^3 window runs in 0.49 instead of 0.70 s on 2 cores, a full BraTS case in 5.5-9.3 instead
# of 9-12 s. Read by PyTorch at its first large allocation; THP_MEM_ALLOC_ENABLE=0 turns it off.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from napari_sevnet.errors import InputError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["InputError", "__version__"]
