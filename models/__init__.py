"""Bundled model definitions that call fastops in their hot paths (importable as ``fastops.models``).

Every model takes ``impl="auto"`` (fastops kernels) or ``impl="reference"`` (the plain-PyTorch reference ops),
builds with random initialisation (nothing is downloaded) and loads a state dict from a local file.
"""
