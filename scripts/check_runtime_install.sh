#!/usr/bin/env bash
# Proves the runtime-only install the way a user gets it (`make test` runs this; so does CI).
#
# 1. builds the wheel and installs it WITHOUT extras into a fresh venv (pip's cache makes reruns fast);
# 2. checks that torch is not importable there;
# 3. exports a tiny random-init model with the full environment (.venv), or takes the exported model and
#    its checkpoint from CHECK_MODEL and CHECK_CKPT (the test suite passes the ones it built already);
# 4. from the fresh venv runs --help, --version, infer (--out, --viz), eval on PF-WILLOW, bench --model,
#    transfer (--review);
# 5. checks that commands needing an extra exit 2 with one line naming it, leaving nothing on disk;
# 6. checks that no platform's base or [gpu] install takes both onnxruntime wheels.
# Prints the venv's size and the cold-start `smatch infer` time. Any failed check exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
# The runtime venv must see only what pip installed into it: a PYTHONPATH from the caller (a test run, a
# dev shell) would put this checkout (and its build's simplematch.egg-info) on its path, and pip would
# then take the wheel as already installed. The full environment gets this checkout explicitly instead.
unset PYTHONPATH
FULL_PYTHONPATH=$PWD
FULL=${FULL_VENV:-.venv}/bin
WORK=build/install-check
RT=$WORK/rt
# The benchmark subset beside the checkout (or where SMATCH_SHARED_DATA says): the PF-WILLOW eval step runs
# when it is there and is skipped, saying so, when it is not (a fresh clone has no ../shared).
WILLOW=${SMATCH_SHARED_DATA:-../shared/data}/pf-willow

step() { printf '\n== %s (%ss)\n' "$*" "$SECONDS"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
# expect_extra EXTRA CMD...: exit code 2, exactly one line of output, naming `simplematch[EXTRA]`.
expect_extra() {
    local extra=$1; shift
    local out rc=0
    out=$("$@" 2>&1) || rc=$?
    printf '$ %s\n%s\n' "$*" "$out"
    [ "$rc" -eq 2 ] || fail "expected exit 2 from '$*', got $rc"
    [ "$(printf '%s\n' "$out" | wc -l)" -eq 1 ] || fail "expected one line from '$*'"
    printf '%s' "$out" | grep -qF "simplematch[$extra]" || fail "'$*' does not name simplematch[$extra]"
}

rm -rf "$WORK"
mkdir -p "$WORK"

step "build the wheel"
"$FULL/pip" wheel -q --no-deps -w "$WORK/dist" . 2>&1 | grep -v '^WARNING: Location' || true
WHEEL=$(ls "$WORK"/dist/simplematch-*.whl)
# The export's parity photos are package data: a wheel without them exports nothing.
n_photos=$(python3 -c "import sys, zipfile; print(sum(n.startswith('simplematch/export/parity_images/') and n.endswith('.jpg') for n in zipfile.ZipFile(sys.argv[1]).namelist()))" "$WHEEL")
[ "$n_photos" -eq 8 ] || fail "the wheel holds $n_photos of the 8 parity photos"
echo "parity photos in the wheel: $n_photos"
# `smatch serve`'s page is package data too: without it GET / has nothing to serve.
for f in index.html app.js style.css examples/src.png examples/tgt.png; do
    python3 -c "import sys, zipfile; sys.exit(sys.argv[2] not in zipfile.ZipFile(sys.argv[1]).namelist())" \
        "$WHEEL" "simplematch/serve/static/$f" || fail "the wheel lacks simplematch/serve/static/$f"
done
echo "serve page assets in the wheel: 5"

step "fresh venv, pip install $WHEEL (no extras)"
python3 -m venv "$RT"
"$RT/bin/pip" install -q "$WHEEL" 2>&1 | grep -v '^WARNING: Location' || true
[ -x "$RT/bin/smatch" ] || fail "pip did not install smatch into the runtime venv (see its output above)"
if "$RT/bin/python" -c "import torch" 2>/dev/null; then fail "torch is importable in the runtime-only venv"; fi
echo "torch: not importable (as intended)"
echo "runtime-only venv size: $(du -sh "$RT" | cut -f1)"

if [ -n "${CHECK_MODEL:-}" ] || [ -n "${CHECK_CKPT:-}" ]; then
    [ -f "${CHECK_MODEL:-}" ] && [ -d "${CHECK_CKPT:-}" ] || fail "CHECK_MODEL (an .onnx file) and CHECK_CKPT (its checkpoint folder) go together"
    step "take the exported model $CHECK_MODEL and its checkpoint $CHECK_CKPT"
    MODEL=$CHECK_MODEL
    CKPT=$CHECK_CKPT
else
    step "export a tiny random-init model with the full environment"
    # One process saves the checkpoint and runs `smatch export` on it (with its parity check): torch loads once.
    PYTHONPATH=$FULL_PYTHONPATH "$FULL/python" - "$WORK/ckpt" "$WORK/model.onnx" <<'PY'
import sys

import torch

from simplematch.checkpoint import save_checkpoint
from simplematch.cli.app import main
from simplematch.config import resolve_config
from simplematch.model import SimpleMatch

torch.manual_seed(0)
cfg = resolve_config("demo_cpu", {"img_size": 64})
save_checkpoint(SimpleMatch(cfg), cfg, sys.argv[1])
sys.exit(main(["export", sys.argv[1], "--format", "onnx", "--out", sys.argv[2]]))
PY
    MODEL=$WORK/model.onnx
    CKPT=$WORK/ckpt
fi

step "runtime venv: --help, --version"
"$RT/bin/smatch" --help > /dev/null
"$RT/bin/smatch" --version

step "runtime venv: cold-start infer"
start=$EPOCHREALTIME
"$RT/bin/smatch" infer examples/src.png examples/tgt.png --kps examples/kps.json --model "$MODEL" \
    --out "$WORK/match.json" --viz "$WORK/match.png" > /dev/null
awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "cold-start smatch infer: %.2f s\n", b - a }'
[ -s "$WORK/match.json" ] && [ -s "$WORK/match.png" ] || fail "infer did not write --out / --viz"

if [ -d "$WILLOW" ]; then
    step "runtime venv: eval on PF-WILLOW"
    "$RT/bin/smatch" eval "$MODEL" --dataset pfwillow --data-root "$WILLOW" --json "$WORK/eval.json" > /dev/null
    "$RT/bin/python" -c "import json,sys; r=json.load(open(sys.argv[1])); assert r['pairs'] > 0, r; print(r['pairs'], 'pairs, PCK', r['pck'])" "$WORK/eval.json"
else
    echo "SKIP eval: $WILLOW not found"
fi

step "runtime venv: bench --model"
"$RT/bin/smatch" bench --model "$MODEL" --runtime onnx --batch 1 --warmup 1 --iters 2 --json "$WORK/bench.json" > /dev/null
"$RT/bin/python" -c "import json,sys; r=json.load(open(sys.argv[1])); assert r['results'], r; print(r['results'][0]['images_per_s'], 'img/s')" "$WORK/bench.json"

step "runtime venv: transfer (COCO references -> folder, review page)"
mkdir -p "$WORK/transfer/targets/sub"
cp examples/src.png "$WORK/transfer/ref.png"
cp examples/tgt.png "$WORK/transfer/targets/a.png"
cp examples/src.png "$WORK/transfer/targets/sub/b.png"
"$RT/bin/python" - "$WORK/transfer" <<'PY'
import json, sys
from pathlib import Path
from PIL import Image

folder = Path(sys.argv[1])
kps = json.load(open("examples/kps.json"))["keypoints"]
w, h = Image.open(folder / "ref.png").size
flat = [v for x, y in kps for v in (x, y, 2)]
json.dump({"images": [{"id": 1, "file_name": "ref.png", "width": w, "height": h}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "keypoints": flat, "bbox": [0, 0, w, h]}],
           "categories": [{"id": 1, "name": "scene", "keypoints": [str(i) for i in range(len(kps))]}]},
          open(folder / "refs.json", "w"))
PY
"$RT/bin/smatch" transfer --refs "$WORK/transfer/refs.json" --targets "$WORK/transfer/targets" --model "$MODEL" \
    --out "$WORK/transfer/res.json" --review "$WORK/transfer/review" > /dev/null
"$RT/bin/python" -c "import json,sys; r=json.load(open(sys.argv[1])); assert [i['file_name'] for i in r['images']] == ['a.png', 'sub/b.png'], r['images']; print(len(r['annotations']), 'results')" "$WORK/transfer/res.json"
[ -s "$WORK/transfer/review/index.html" ] || fail "transfer did not write the review page"

step "runtime venv: commands that need an extra say which"
expect_extra train "$RT/bin/smatch" train --preset demo_cpu --out "$WORK/train-out"
[ ! -e "$WORK/train-out" ] || fail "a refused train left $WORK/train-out behind"
expect_extra train "$RT/bin/smatch" export "$CKPT" --out "$WORK/refused.onnx"
[ ! -e "$WORK/refused.onnx" ] || fail "a refused export left a file behind"
# --dataset synthetic: no benchmark data needed, and [train] is named before [synthetic] would be
expect_extra train "$RT/bin/smatch" eval "$CKPT" --dataset synthetic
expect_extra synthetic "$RT/bin/smatch" eval "$MODEL" --dataset synthetic
expect_extra serve "$RT/bin/smatch" serve "$MODEL"

step "[gpu] and the base install never hold both onnxruntime wheels"
# The wheel's own Requires-Dist, with its markers evaluated for each platform: exact and instant. The full
# resolution (`pip install --dry-run --report`, ~2-3 min for the NVIDIA wheels' metadata) runs with
# SMATCH_CHECK_GPU_RESOLVE=1.
"$RT/bin/python" - "$WHEEL" <<'PY'
import sys
import zipfile

from packaging.requirements import Requirement

with zipfile.ZipFile(sys.argv[1]) as whl:
    meta = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
    lines = whl.read(meta).decode().splitlines()
reqs = [Requirement(line.split(":", 1)[1]) for line in lines if line.startswith("Requires-Dist:")]
platforms = {
    "linux x86_64": {"sys_platform": "linux", "platform_machine": "x86_64"},
    "windows AMD64": {"sys_platform": "win32", "platform_machine": "AMD64"},
    "linux aarch64": {"sys_platform": "linux", "platform_machine": "aarch64"},
    "macOS arm64": {"sys_platform": "darwin", "platform_machine": "arm64"},
}
for name, env in platforms.items():
    for extras in ((), ("gpu",), ("train",)):
        names = set()
        for extra in ("", *extras):
            names |= {r.name for r in reqs if r.marker is None or r.marker.evaluate({**env, "extra": extra})}
        ort = sorted(n for n in names if n.startswith("onnxruntime"))
        print(f"{name:14} [{','.join(extras)}]: {ort}")
        assert len(ort) == 1, f"{name} {extras}: must resolve to exactly one onnxruntime wheel, got {ort}"
        if "gpu" in extras and env["platform_machine"] in ("x86_64", "AMD64"):
            assert ort == ["onnxruntime-gpu"], ort
PY
if [ "${SMATCH_CHECK_GPU_RESOLVE:-0}" = 1 ]; then
    "$RT/bin/pip" install -q --dry-run --ignore-installed --report "$WORK/gpu-report.json" \
        "simplematch[gpu] @ file://$PWD/$WHEEL" 2>&1 | grep -v '^WARNING: Location' || true
    "$RT/bin/python" -c "import json,sys; n=sorted(i['metadata']['name'].lower() for i in json.load(open(sys.argv[1]))['install']); print('[gpu] would install:', ', '.join(n)); assert [x for x in n if x.startswith('onnxruntime')] == ['onnxruntime-gpu'], n" "$WORK/gpu-report.json"
fi

step "install check passed"
