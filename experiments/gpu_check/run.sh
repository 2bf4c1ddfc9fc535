#!/usr/bin/env bash
# GPU-machine check of ltc's GPU paths (run on a lent GPU machine from the repo root; see README.md).
# Wheels that the machine lacks (onnx-graphsurgeon, jsonschema and its needs) travel in .whl/.
set -uo pipefail
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-check}; mkdir -p "$OUT"
echo "== machine"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 - <<'PY'
import onnxruntime, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
print("onnxruntime", onnxruntime.__version__, onnxruntime.get_available_providers())
print("nccl available", torch.distributed.is_nccl_available())
PY
echo "== ltc ticket, one process"
python3 -m ltc.cli ticket --model lenet300 --dataset synthetic --iterations 40 --eval-every 20 --rounds 1 \
    --controls none --out "$OUT/single" --no-progress; echo "exit $?"
for n in 1 2; do
    echo "== ltc ticket under torchrun, $n process(es)"
    torchrun --standalone --nproc_per_node "$n" -m ltc.cli ticket --model lenet300 --dataset synthetic \
        --iterations 40 --eval-every 20 --rounds 1 --controls none --batch-size 60 --out "$OUT/ddp$n" --no-progress \
        2>&1 | grep -v "^W\|OMP_NUM_THREADS\|^\*\*\*" | tail -4; echo "exit ${PIPESTATUS[0]}"
done
echo "== ltc bench: GPU providers without onnxruntime-gpu / TensorRT report why they are skipped"
python3 -m ltc.cli export "$OUT/single"/*/trial0/ticket_round1.pt -o "$OUT/m.onnx" && \
python3 -m ltc.cli bench "$OUT/m.onnx" --provider cpu --provider cuda --provider tensorrt --provider trt \
    --rounds 1 --iterations 5 | grep -E "^skipped|CPUExecutionProvider"; echo "exit $?"
echo "== the fast test suite on this machine's Python, torch, onnx and onnxruntime"
python3 -m pytest -q -p no:cacheprovider 2>&1 | tail -3
