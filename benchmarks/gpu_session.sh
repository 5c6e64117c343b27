#!/usr/bin/env bash
# Issue 5's GPU checks in one prepared command, for a session lent a GPU by the device tool:
#
#     run(command="bash benchmarks/gpu_session.sh", timeout_s=600)
#
# On that machine python3 already has PyTorch and Triton (nothing can be installed from outside):
# qcompile is installed from this tree without its dependencies. Then, each step with its own time
# limit so a hang cannot eat the others' time:
#   1. the Triton kernel tests compiled on the GPU (QCOMPILE_TEST_DEVICE=cuda) and the CUDA backend
#      tests (tests/integration/test_gpu_backend.py);
#   2. benchmarks/gpu_kernels.py: the int8 peak, GEMMs at 2048³-8192³, the quantizer kernels and
#      the GPT-2-small block step (BF16 torch.compile, the default fqt, attention kept in SDPA;
#      the first two profiled: kernel time by category);
#      it writes its JSON after each section, so a cut-short run keeps what it measured.
# Logs, the environment and gpu_kernels.json land in $OUT (the device tool brings them back);
# copy the JSON to benchmarks/results/ and quote it in the README.
set -u
OUT=${OUT:-$(mktemp -d)}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
cd "$(dirname "$0")/.."

{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    $PY -c "import sys, torch, triton; print(sys.version); print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

$PY -m pip install -q --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1 \
    || { echo "install failed:"; tail -n 20 "$OUT/install.log"; }

# 191 tests took 235 s on an H200 (most of it compiling); -p no:logging keeps Inductor's debug log
# out of the failure reports.
QCOMPILE_TEST_DEVICE=cuda timeout 300 $PY -m pytest -q -p no:cacheprovider -p no:logging -rfE --tb=short \
    tests/unit/test_triton_kernels.py tests/unit/test_triton_fp8_gemm.py tests/integration/test_gpu_backend.py > "$OUT/tests.log" 2>&1
echo "== tests: exit $?"
tail -n 30 "$OUT/tests.log"

# About 140 s on an H200 (GEMMs, three block configurations with two profiled, quantizers).
timeout 260 $PY benchmarks/gpu_kernels.py --sizes 2048,4096,8192 \
    --block-configs "bf16 torch.compile;fqt luq-int4 (Triton int8 GEMMs);fqt luq-int4, attention high precision (fused SDPA)" \
    --out "$OUT/gpu_kernels.json" > "$OUT/bench.log" 2>&1
echo "== benchmark: exit $?"
grep -v "it/s\]" "$OUT/bench.log" | tail -n 60
