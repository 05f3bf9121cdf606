#!/usr/bin/env bash
# The GPU checks of issue 26 as one bounded script, in order of importance: the CUDA tests; certify (with and
# without CUDA graphs) against raw inference and Cohen's loop (digits CNN, resnet18; resnet50 in fp32 and bf16 with
# the seconds per image at n = 100,000); training throughput with and without noise; Smooth-Reduce with bf16 and
# streams 1 / 2; denoised, video and segmentation certify on cuda; a short fp16 AMP training run; NCCL with one rank
# (the benchmark starts torchrun itself). Each step has its own time limit, and the whole script stops starting steps
# when BUDGET seconds (default 480) are spent, so one device session always ends with the log of what ran.
# Under OUT (default gpu-checks/): checks.log (every step's output, appended as it runs) and one JSON per benchmark;
# scratch files (examples, checkpoint) in a temp dir.
# Usage: bash benchmarks/gpu_checks.sh [OUT] [BUDGET]   (needs a CUDA device and the project importable: pip install -e .)
set -u -o pipefail
out=${1:-gpu-checks}
budget=${2:-480}
scratch=$(mktemp -d)
mkdir -p "$out"
log="$out/checks.log"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
step() {  # step NAME SECONDS COMMAND...: run one check within what is left of the budget, never stop the sequence
    local name=$1 seconds=$2
    shift 2
    local left=$((budget - SECONDS))
    if ((left < 15)); then
        echo "=== $name: skipped, the budget of $budget s is spent" | tee -a "$log"
        return
    fi
    ((seconds > left)) && seconds=$left
    echo "=== $name (at most ${seconds} s): $*" | tee -a "$log"
    local started=$SECONDS
    timeout "$seconds" "$@" >> "$log" 2>&1
    echo "=== $name: exit $? after $((SECONDS - started)) s" | tee -a "$log"
}
nvidia-smi -L | tee -a "$log"
step test_cuda 90 python3 -m pytest tests/test_cuda.py tests/test_engine.py tests/test_cuda_graphs.py -rs -q -p no:cacheprovider
step certify 60 python3 benchmarks/bench_certify.py --device cuda --cuda-graphs --json "$out/certify.json"
step certify_resnet50 45 python3 benchmarks/bench_certify.py --device cuda --skip-digits --timm-model resnet50 \
    --n-resnet 4000 --batch-resnet 256 --channels-last --cuda-graphs --json "$out/certify_resnet50.json"
step certify_resnet50_bf16 45 python3 benchmarks/bench_certify.py --device cuda --skip-digits --timm-model resnet50 \
    --n-resnet 8000 --batch-resnet 256 --channels-last --autocast bf16 --json "$out/certify_resnet50_bf16.json"
step train_speed 75 python3 benchmarks/bench_train_speed.py --device cuda --model resnet50 --batch 128 --steps 20 \
    --amp bf16 --channels-last --json "$out/train_speed.json"
step patches_bf16 60 python3 benchmarks/bench_patches.py --device cuda --models resnet50 --layout channels-last \
    --autocast bf16 --n-resnet50 4000 --batch-resnet50 256 --streams 1 2 --repeats 3 --json "$out/patches_bf16.json"
step patches 100 python3 benchmarks/bench_patches.py --device cuda --n 50000 --batch 1000 --n-resnet50 2000 \
    --batch-resnet50 256 --streams 1 2 --repeats 3 --json "$out/patches.json"
step denoised 45 python3 benchmarks/bench_denoised.py --device cuda --parts a --rate-n 50000
step video 45 python3 benchmarks/bench_video.py --device cuda --skip-memory --n 20000 --batch 480 --json "$out/video.json"
step segmentation 40 python3 benchmarks/bench_segmentation.py --device cuda --json "$out/segmentation.json"
step train_amp 60 bash -c "python3 -m vision_rs examples '$scratch/ex' --limit 200 > /dev/null && python3 -m vision_rs \
    train '$scratch/ex/digits' --model digits_cnn --no-pretrained --sigma 0.25 --epochs 2 --amp fp16 --device cuda \
    --certify 20 --no-progress --out '$scratch/train'"
step distributed 90 python3 benchmarks/bench_distributed.py --device cuda --processes 1 --json "$out/distributed.json"
echo "=== done after $SECONDS s" | tee -a "$log"
