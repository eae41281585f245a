"""The bundled trainer: SEV-Net and its baselines on BraTS-layout data (``sevnet-train``)."""
