#!/usr/bin/env bash
# GPU numbers (paper Table 3 throughput, Table 11 training memory), in one run. For a CUDA machine that has torch, timm, onnx and onnxruntime (CPU) but
# no package registry and no TensorRT. Run from the repository root:
#
#     bash scripts/gpu_check.sh [OUT_DIR]          # default OUT_DIR: runs/gpu_check (or $OUT when set)
#
# 1. pip install --no-deps -e .  (no downloads)       2. the `gpu`-marked tests
# 3. smatch bench --device cuda: DINOv2 ViT-B/14 @ 252 and 448, ResNet-101 @ 256 (paper presets); batch 1/8/32; fp32
#    and torch autocast fp16 (random init: throughput does not depend on the weights)
# 4. smatch bench --train-memory: ViT-B/14 @ 448, batch 8 (paper Table 11: dense / sparse / sparse+window)
# Every step writes its JSON / log under OUT_DIR; a failed step is logged and the next one still runs.
# Paper Table 3 (RTX 4090): 65 / 26 / 98 img/s for ViT-B/14@252 / ViT-B/14@448 / ResNet-101@256.
set -uo pipefail
OUT_DIR="${1:-${OUT:-runs/gpu_check}}"
PY="${PYTHON:-python}"
mkdir -p "$OUT_DIR"
status=0
step() {  # step NAME CMD...: run, tee the log, remember a failure
    local name="$1"; shift
    echo "== $name: $*" | tee -a "$OUT_DIR/steps.log"
    if ! "$@" > "$OUT_DIR/$name.log" 2>&1; then
        echo "   FAILED (see $OUT_DIR/$name.log)" | tee -a "$OUT_DIR/steps.log"; status=1
    fi
    tail -n 25 "$OUT_DIR/$name.log"
}

nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv > "$OUT_DIR/gpu.csv" 2>&1 || true
"$PY" -c "import torch, timm, onnx, onnxruntime as o; print(torch.__version__, torch.version.cuda, timm.__version__, onnx.__version__, o.__version__, o.get_available_providers())" > "$OUT_DIR/versions.txt" 2>&1 || true
step install "$PY" -m pip install --no-deps --no-build-isolation -q -e .
step pytest_gpu "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider tests/export/test_export.py tests/runtime/test_backends.py tests/runtime/test_engine_env.py tests/export/test_one_graph.py
# The paper's presets (architecture, windows, LoRA as trained), random init.
for preset in dinov2_b14_252_spair dinov2_b14_448_spair resnet101_256_spair; do
    step "bench_$preset" "$PY" -m simplematch.cli bench --device cuda --runtime torch,torch-amp \
        --preset "$preset" --batch 1,8,32 --warmup 5 --iters 30 --json "$OUT_DIR/bench_$preset.json"
done
step train_memory_dinov2_b14_448 "$PY" -m simplematch.cli bench --device cuda --runtime none --train-memory \
    --preset dinov2_b14_448_spair --batch 8 --json "$OUT_DIR/train_memory_dinov2_b14_448.json"
echo "results in $OUT_DIR (steps.log lists every step)"
exit $status
