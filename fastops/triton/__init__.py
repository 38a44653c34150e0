"""Triton kernels, registered as torch ops `fastops::<name>_triton` (see _registry.py)."""
