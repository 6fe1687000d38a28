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

if __name__ == "kernels":  # pragma: no cover - exercised in a subprocess by tests/core/test_layout.py
    # This folder is ``ftib.kernels``; it is only ever imported as a top-level
    # ``kernels`` because the repository root is on ``sys.path`` (``python -m ...`` run
    # from a checkout puts the working directory first). That name belongs to Hugging
    # Face's ``kernels`` distribution, which transformers >= 5.25 requires and imports:
    # hand the name to it, found on the rest of the path, or fail as a missing module.
    import importlib.machinery
    import importlib.util
    import sys
    from pathlib import Path

    _here = Path(__file__).resolve().parent.parent
    _path = [p for p in sys.path if Path(p or ".").resolve() != _here]
    _spec = importlib.machinery.PathFinder.find_spec("kernels", _path)
    if _spec is None or _spec.loader is None:
        raise ModuleNotFoundError("No module named 'kernels' (the repository's kernels/ folder is ftib.kernels, "
                                  "not the Hugging Face `kernels` package)", name="kernels")
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["kernels"] = _module
    _spec.loader.exec_module(_module)

