#!/usr/bin/env bash
# One device call of training: continue the shipped diffusion weights on a lent GPU.
#
# Meant for the `device` tool (one call of at most 10 minutes, 15 device-minutes per task):
#   1. here, once:  DIFFPY_DIFFUSION_DATA=<datasets> python -m diffpy_diffusion.backends.diffusion.data .gpu/pool_v1.npz
#   2. device run:  command "bash benchmarks/gpu_train.sh 420", carry [".gpu"], timeout_s 560
#   3. here:        copy $files_at/last*.pt into a runs/ folder, evaluate them on the validation split,
#                   and replace backends/diffusion/weights/ only if the evaluation says they are better.
# The training code needs torch and numpy only (no pymatgen, no diffpy), so the machine's own
# python3 and torch run it with the repository on PYTHONPATH.  Output under $OUT: last.pt,
# last.train.pt, last.optim.pt, log.csv and train.log.
set -euo pipefail
BUDGET="${1:-420}"                    # seconds of training in this call
POOL="${POOL:-.gpu/pool_v1.npz}"      # the training pool's array cache, carried from here
RUN="${RUN:-/tmp/run}"
OUT="${OUT:-/tmp/out}"
W=diffpy_diffusion/backends/diffusion/weights
mkdir -p "$RUN" "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
test -f "$POOL" || { echo "missing $POOL: build it here first (see the header)"; exit 2; }
# resume from the shipped weights (the budget continues their cosine schedule)
cp "$W/diffusion.pt" "$RUN/last.pt"
cp "$W/diffusion.train.pt" "$RUN/last.train.pt"
cp "$W/diffusion.optim.pt" "$RUN/last.optim.pt"
ELAPSED=$(python3 - "$RUN/last.pt" <<'EOF'
import sys, torch
ck = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
print(int(float(ck.get("meta", {}).get("elapsed_s", 0.0))))
EOF
)
PYTHONPATH=. python3 -m diffpy_diffusion.backends.diffusion.train --data "$POOL" --out "$RUN" --resume \
  --batch-size 1024 --time-budget $((ELAPSED + BUDGET)) --ckpt-every 60 --progress plain 2>&1 | tee "$OUT/train.log"
cp "$RUN"/last.pt "$RUN"/last.train.pt "$RUN"/last.optim.pt "$RUN"/log.csv "$OUT"/
ls -la "$OUT"
