"""Fast ops with one Python API each.

Triton kernels (GPU), the native module ``ftib.kernels._C`` (CPU, built from ``csrc/``)
behind the typed wrappers of :mod:`ftib.kernels.native`, and one readable pure-PyTorch
reference per op in :mod:`ftib.kernels.reference`.
"""
