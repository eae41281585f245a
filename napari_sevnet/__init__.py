"""napari-sevnet: SEV-Net brain-tumour segmentation of multi-modal MRI for napari.

The library (io, regions, model, inference, metrics) imports without Qt; the
widgets under ``napari_sevnet.widgets`` are the only Qt code.
"""

from napari_sevnet.errors import InputError

__version__ = "0.1.0"
__all__ = ["InputError", "__version__"]
