"""Public op functions: one module per op family (argument checks, fake kernels, autograd)."""
