#!/usr/bin/env bash
# GPU check: ResNet-18 at 224 px, batch 256: model-only and end-to-end training images/s, fp32 against
# bf16 autocast + channels_last (+ torch.compile), on a synthetic JPEG folder made on the spot; and the
# bf16 resident row again through `transferkit run --nproc 1` (torchrun + DDP): the distributed path's overhead.
# Writes $OUT/gpu_check.json (OUT defaults to ./gpu_check_out) and prints a table. Needs no network.
#
#   bash benchmarks/gpu_check.sh            # on a CUDA machine (about 3-5 minutes on an H100)
#   bash benchmarks/gpu_check.sh --smoke    # tiny sizes on the CPU: checks the script end to end
#   GPU_CHECK_SMOKE=1 bash benchmarks/gpu_check.sh
# Extra arguments go to gpu_check.py (e.g. --no-compile).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$PWD/gpu_check_out}"
export OUT
mkdir -p "$OUT"

args=()
if [[ "${GPU_CHECK_SMOKE:-0}" == "1" ]]; then
  args+=(--smoke)
fi
args+=("$@")

# transferkit from this checkout, without installing anything (its dependencies must be there already).
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
"$PYTHON" -c "import torch, torchvision, timm, typer, rich, pydantic, yaml, transferkit" \
  || { echo "gpu_check: torch, torchvision, timm, typer, rich, pydantic and pyyaml must be importable" >&2; exit 2; }

if [[ " ${args[*]} " != *" --smoke "* ]]; then
  "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "gpu_check: no CUDA device visible to torch; use --smoke to check the script on a CPU" >&2; exit 2; }
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi

# Every measurement inside is bounded by steps or epochs; this caps the whole run all the same.
timeout "${GPU_CHECK_TIMEOUT:-420}" "$PYTHON" "$REPO/benchmarks/gpu_check.py" --out "$OUT" "${args[@]}"
