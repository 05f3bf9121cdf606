#!/usr/bin/env bash
# The GPU checks of one session, in order of importance, each bounded in time: the CUDA tests, the certification
# benchmarks on cuda, a short AMP training run, NCCL with one rank (the benchmark starts torchrun itself). Under OUT (default gpu-checks/): checks.log (every
# step's output, appended as it runs) and one JSON per benchmark; scratch files (examples, checkpoint) in a temp dir.
# Usage: bash benchmarks/gpu_checks.sh [OUT]   (needs a CUDA device and the project importable: pip install -e .)
set -u -o pipefail
out=${1:-gpu-checks}
scratch=$(mktemp -d)
mkdir -p "$out"
log="$out/checks.log"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
step() {  # step NAME SECONDS COMMAND...: run one check, keep its log, never stop the sequence
    local name=$1 seconds=$2
    shift 2
    echo "=== $name (at most ${seconds} s): $*" | tee -a "$log"
    local started=$SECONDS
    timeout "$seconds" "$@" >> "$log" 2>&1
    echo "=== $name: exit $? after $((SECONDS - started)) s" | tee -a "$log"
}
nvidia-smi -L | tee -a "$log"
step test_cuda 200 python3 -m pytest tests/test_cuda.py -rs -q -p no:cacheprovider
step bench_certify 100 python3 benchmarks/bench_certify.py --device cuda --json "$out/bench_certify.json"
step bench_patches 120 python3 benchmarks/bench_patches.py --device cuda --n 50000 --batch 1000 --n-resnet50 2000 \
    --batch-resnet50 256 --streams 1 2 --json "$out/bench_patches.json"
step bench_segmentation 60 python3 benchmarks/bench_segmentation.py --device cuda --json "$out/bench_segmentation.json"
step bench_video 200 python3 benchmarks/bench_video.py --device cuda --json "$out/bench_video.json"
step train_amp 90 bash -c "python3 -m vision_rs examples '$scratch/ex' --limit 200 > /dev/null && python3 -m vision_rs \
    train '$scratch/ex/digits' --model digits_cnn --no-pretrained --sigma 0.25 --epochs 2 --amp fp16 --device cuda \
    --certify 20 --no-progress --out '$scratch/train'"
step distributed 120 python3 benchmarks/bench_distributed.py --device cuda --processes 1 --json "$out/bench_distributed.json"
