#!/usr/bin/env bash
# The FP8 GEMM path's GPU checks in one prepared command, for a session lent a GPU by the device
# tool (a GPU with FP8 tensor cores: compute capability 8.9 or more):
#
#     run(command="bash benchmarks/gpu_fp8_session.sh", timeout_s=540)
#
# qcompile is installed from this tree without its dependencies (the machine's python3 has PyTorch
# and Triton). Then, each step with its own time limit:
#   1. the FP8 kernel tests compiled on the GPU (QCOMPILE_TEST_DEVICE=cuda) and the CUDA backend
#      test of fp8-rowwise training steps against the Inductor step (TESTS_K: pytest -k, "fp8");
#   2. benchmarks/gpu_fp8_gemm.py: the kernel's accumulation error on the tensor cores, and its
#      speed beside BF16 torch.mm and cuBLAS FP8 (torch._scaled_mm) at 4096³ and 8192³ (SIZES),
#      for max_num_imprecise_acc 0 (the default), 64 and Triton's own default.
# Logs and gpu_fp8_gemm.json land in $OUT.
set -u
OUT=${OUT:-$(mktemp -d)}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."

{
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv
    $PY -c "import sys, torch, triton; print(sys.version); print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name(), torch.cuda.get_device_capability())"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

$PY -m pip install -q --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1 \
    || { echo "install failed:"; tail -n 20 "$OUT/install.log"; }

QCOMPILE_TEST_DEVICE=cuda timeout 240 $PY -m pytest -q -p no:cacheprovider -rfEs -k "${TESTS_K:-fp8}" \
    tests/unit/test_triton_fp8_gemm.py tests/integration/test_gpu_backend.py > "$OUT/tests.log" 2>&1
echo "== tests: exit $?"
grep -v "^DEBUG" "$OUT/tests.log" | tail -n 40

timeout 240 $PY benchmarks/gpu_fp8_gemm.py --sizes "${SIZES:-4096,8192}" --imprecise 0,64,none \
    --out "$OUT/gpu_fp8_gemm.json" > "$OUT/bench.log" 2>&1
echo "== benchmark: exit $?"
tail -n 50 "$OUT/bench.log"
