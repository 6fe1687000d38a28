"""Fast ops with one Python API each.

Triton kernels (GPU), the native module ``ftib.kernels._C`` (CPU, built from ``csrc/``)
behind the typed wrappers of :mod:`ftib.kernels.native`, and one readable pure-PyTorch
reference per op in :mod:`ftib.kernels.reference`.

GRPO hot path (docs/kernels.md): :mod:`ftib.kernels.similarity` (embedding-reward
similarity), :mod:`ftib.kernels.advantages` (group-relative advantages) and
:mod:`ftib.kernels.grpo_loss` (fused linear GRPO loss); the CPT/Align/SFT loss:
:mod:`ftib.kernels.linear_ce` (fused linear cross-entropy), which shares the GRPO loss's
chunk loop, row passes and autograd plumbing (:mod:`ftib.kernels._vocab_chunks`). They are imported from their
modules, not re-exported here, so ``import ftib.kernels`` does not import Triton.
"""
