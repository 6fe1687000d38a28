#!/usr/bin/env bash
# GPU check of the GRPO kernels (issue 7) and the fused linear cross-entropy (issue 15):
# parity of the Triton paths on CUDA, then the similarity / advantages / fused-loss /
# linear-CE benchmarks, in under 10 minutes on one H100.
#
#   bash bench/gpu_check.sh            # writes results under ${OUT:-/tmp/ftib-gpu-check}
#
# Needs: a CUDA torch, triton, the built native module (pip install -e . --no-deps
# --no-build-isolation), pytest-benchmark; liger-kernel is optional (its cases skip
# cleanly when it does not import).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/ftib-gpu-check}"
mkdir -p "$out"
start=$(date +%s)
budget() { echo "[gpu_check] $1 after $(( $(date +%s) - start ))s"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python - <<'PY' | tee "$out/versions.txt"
import torch, triton
print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)
assert torch.cuda.is_available(), "gpu_check.sh needs CUDA"
try:
    import liger_kernel
    print("liger-kernel", getattr(liger_kernel, "__version__", "present"))
except Exception as exc:
    print("liger-kernel absent:", exc)
PY

# 1. Parity: on a CUDA machine the triton_interp cases compile and run on the GPU.
timeout 180 python -m pytest tests/kernels/test_similarity.py tests/kernels/test_advantages.py \
    tests/kernels/test_grpo_loss.py tests/kernels/test_linear_ce.py -q -p no:cacheprovider -m "triton_interp" \
    --junitxml="$out/parity.xml" 2>&1 | tail -5 | tee "$out/parity.txt"
budget "parity"

# 2. Similarity and advantages (all sizes).
timeout 120 python -m pytest bench/test_bench_similarity.py bench/test_bench_advantages.py \
    --benchmark-only -m "" -q -p no:cacheprovider --benchmark-json="$out/sim_adv.json" 2>&1 | tail -3
budget "similarity + advantages"

# 3. Fused loss vs eager vs Liger at Qwen's vocabulary, forward+backward, every size.
timeout 330 python -m pytest bench/test_bench_grpo_loss.py --benchmark-only -m "" -k "full" -q \
    -p no:cacheprovider --benchmark-json="$out/loss.json" 2>&1 | tail -3
budget "loss"

# 4. Fused linear cross-entropy vs eager vs Liger at the extended 167,680 vocabulary.
timeout 150 python -m pytest bench/test_bench_linear_ce.py --benchmark-only -m "" -k "full" -q \
    -p no:cacheprovider --benchmark-json="$out/linear_ce.json" 2>&1 | tail -3
budget "linear ce"

python -m ftib.bench.ratios "$out/sim_adv.json" | tee "$out/sim_adv.md"
python -m ftib.bench.ratios "$out/loss.json" | tee "$out/loss.md"
python -m ftib.bench.ratios "$out/linear_ce.json" | tee "$out/linear_ce.md"
budget "done"
