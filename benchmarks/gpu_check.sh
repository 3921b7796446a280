#!/usr/bin/env bash
# GPU check for ONE NVIDIA GPU with no network, in about 10 minutes:
#   bash benchmarks/gpu_check.sh            the CUDA-marked tests, the GPT-XXL@384 VA-π step at the paper's batch
#                                           (both schedules, breakdown, MFU, peak memory), GPT-XXL@384 sampling
#                                           throughput in bf16 (tokens/s, images/s; growing cache vs static cache +
#                                           compiled step), 1-process DDP and FSDP smoke runs of the trainer
#                                           (VA-π and the decoder baseline): weights moved, resume equals uninterrupted
#   bash benchmarks/gpu_check.sh --dry-run  the same script on the CPU with a tiny model; CUDA parts are skipped
#                                           and say so (CI runs this)
# Needs python3 with torch, accelerate, numpy (transformers, safetensors, scipy as the project); pytest comes from
# benchmarks/wheels when the machine has none. No gradio, plotly, lpips, torchvision or PIL needed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DRY=()
[ "${1:-}" = "--dry-run" ] && DRY=(--dry-run)
status=0
run() {  # run "title" timeout cmd...: one section, its exit status kept
  local title=$1 limit=$2; shift 2
  echo "== $title"
  timeout "$limit" "$@" || { echo "!! $title failed (exit $?)"; status=1; }
}
if ! "$PY" -c "import pytest" 2>/dev/null; then
  pkgs=$(mktemp -d /tmp/vapi-gpu-check-XXXX)
  "$PY" -m pip install --quiet --no-index --find-links benchmarks/wheels --target "$pkgs" pytest \
    && export PYTHONPATH="$pkgs${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
if [ ${#DRY[@]} -eq 0 ]; then
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || { echo "no CUDA device: use --dry-run"; exit 2; }
  run "CUDA-marked tests" 150 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
else
  echo "== CUDA-marked tests: skipped (dry run, no CUDA)"
fi
run "VA-π step, breakdown, MFU, memory" 330 "$PY" -m benchmarks.gpu_check "${DRY[@]}"
run "GPT-XXL sampling throughput" 300 "$PY" -m benchmarks.gpu_check --sampling "${DRY[@]}"
smoke() {  # smoke KIND: VA-π and the decoder baseline, 2 steps, a resume to step 3, 3 uninterrupted steps + checks
  local kind=$1 root; root=$(mktemp -d /tmp/vapi-smoke-XXXX)
  for method in vapi decoder; do
    for phase in first resume whole; do
      run "$kind smoke: $method $phase" 90 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 \
        -m benchmarks.gpu_check --smoke "$kind" --method "$method" --root "$root" --phase "$phase" "${DRY[@]}"
    done
  done
}
smoke ddp
smoke fsdp  # FSDP2 on a mesh of one process: the trainer's FSDP path (2 ranks: tests/test_multiprocess.py on CPU)
exit $status
