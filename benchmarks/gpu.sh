#!/usr/bin/env bash
# slimeseg GPU benchmark: runs in well under 8 minutes on one CUDA GPU, needs no network.
#
#   bash benchmarks/gpu.sh            # from the repository root
#   PYTHON=.venv/bin/python OUT=/tmp/out bash benchmarks/gpu.sh
#   # CPU smoke test of the same script (tiny model, small sizes):
#   DEVICE=cpu SIZE=128 MODELS=tiny FP32_MODELS=tiny FIT_MODEL=tiny STEPS=3 IMAGES=4 BATCH=2 REPEATS=1 \
#       bash benchmarks/gpu.sh
#
# 1. the machine: nvidia-smi, torch/diffusers versions, models present in ~/.cache/huggingface;
# 2. bench.py at 512x512 on cuda (ours in the device's default dtype, bf16 where supported, vs the fp32 reference-style baseline,
#    and the bare-UNet floor), then ours in fp32 (the dtype lever on its own);
# 3. a 200-step 1-shot fit of the full-size random-weight UNet (model building excluded) and
#    batched inference throughput at 512x512 (images/s);
# 4. fit_speed.py: a fit step with each speed setting (cached views, local gradients) vs the default;
# 5. precision.py: one fit step's embedding gradient in bf16 and (loss-scaled) fp16 vs fp32;
# 6. video.py --speed on the full-size shapes: clip frames/s against still images with each flow
#    (the flow runs on the CPU beside the UNet: does it keep up with a GPU?).
# Each step has its own timeout so a hang cannot eat the budget; results go to $OUT as JSON.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-benchmarks/gpu-results}
DEVICE=${DEVICE:-cuda}; SIZE=${SIZE:-512}; MODELS=${MODELS:-tiny,full}; FP32_MODELS=${FP32_MODELS:-full}
FIT_MODEL=${FIT_MODEL:-full}; STEPS=${STEPS:-200}; IMAGES=${IMAGES:-64}; BATCH=${BATCH:-8}
REPEATS=${REPEATS:-5}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error PYTHONWARNINGS=ignore
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
t0=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - t0 )) s] $*"; }

stamp "machine"
nvidia-smi || echo "nvidia-smi not available"
"$PY" - <<'EOF'
import torch, diffusers
print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| available", torch.cuda.is_available(),
      "| diffusers", diffusers.__version__)
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(0))
EOF
HUB="${HF_HOME:-$HOME/.cache/huggingface}/hub"
if [ -d "$HUB" ] && ls "$HUB" | grep -q '^models--'; then
    echo "models in $HUB:"; ls "$HUB" | grep '^models--' | sed 's/^models--/  /; s/--/\//g'
else
    echo "no model in $HUB (the benchmark needs none: it builds random-weight models)"
fi

stamp "bench.py --size $SIZE --device $DEVICE (ours in the device's default dtype vs baseline fp32)"
timeout 240 "$PY" benchmarks/bench.py --size "$SIZE" --device "$DEVICE" --models "$MODELS" \
    --repeats "$REPEATS" --batch "$BATCH" --json "$OUT/bench-$DEVICE-$SIZE.json" \
    || echo "bench.py failed or timed out (rc $?)"

stamp "bench.py --size $SIZE --device $DEVICE --dtype float32 (ours fp32, no baseline)"
timeout 90 "$PY" benchmarks/bench.py --size "$SIZE" --device "$DEVICE" --dtype float32 \
    --models "$FP32_MODELS" --repeats "$REPEATS" --batch "$BATCH" --no-baseline \
    --json "$OUT/bench-$DEVICE-$SIZE-fp32.json" || echo "bench.py fp32 failed or timed out (rc $?)"

stamp "$STEPS-step 1-shot fit + batched inference throughput at $SIZE"
timeout 150 "$PY" benchmarks/fit_throughput.py --model "$FIT_MODEL" --device "$DEVICE" --size "$SIZE" \
    --steps "$STEPS" --images "$IMAGES" --batch "$BATCH" --json "$OUT/fit-$DEVICE-$SIZE.json" \
    || echo "fit_throughput.py failed or timed out (rc $?)"

stamp "fit speed settings (cached views, local gradients): step times at $SIZE"
timeout 120 "$PY" benchmarks/fit_speed.py --model "$FIT_MODEL" --device "$DEVICE" --size "$SIZE" \
    --dtype "${FIT_DTYPES:-float16,float32}" --threads 0 --repeats "$REPEATS" --json "$OUT/fit-speed-$DEVICE-$SIZE.json" \
    || echo "fit_speed.py failed or timed out (rc $?)"

stamp "precision: one step's embedding gradient in bf16 / fp16 (+ loss scale) vs fp32 at $SIZE"
timeout 120 "$PY" benchmarks/precision.py --device "$DEVICE" --size "$SIZE" \
    --json "$OUT/precision-$DEVICE-$SIZE.json" || echo "precision.py failed or timed out (rc $?)"

stamp "video: frames/s against still images, flow dis-medium / dis-balanced, full-size shapes at $SIZE"
timeout 150 "$PY" benchmarks/video.py --model "$FIT_MODEL" --device "$DEVICE" --size "$SIZE" --clips 0 \
    --seeds 0 --kinds car --speed --speed-frames "${VIDEO_FRAMES:-24}" --batch "$BATCH" \
    --speed-methods dis-medium,dis-balanced --speed-repeats 2 --json "$OUT/video-speed-$DEVICE-$SIZE.json" \
    || echo "video.py failed or timed out (rc $?)"

stamp "done; results in $OUT"
ls -l "$OUT"
