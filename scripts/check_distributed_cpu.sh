#!/usr/bin/env bash
# Trains the demo checkpoint for 3 steps in 2 CPU processes (gloo) twice, with the same data and seed: DDP through
# torchrun, and DeepSpeed ZeRO-3 through accelerate with examples/accelerate/zero3.yaml; prints each run's losses and
# the largest difference between the two saved models. Needs deepspeed importable (pip install deepspeed: it installs
# without CUDA) and runs from anywhere: bash scripts/check_distributed_cpu.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-$(mktemp -d)}
mkdir -p "$out"
python=${PYTHON:-.venv/bin/python}
demo=$(dirname "$(find src/storm_hf -path '*demo_checkpoint/config.json' | head -1)")
train=(examples/train_storm.py --model "$demo" --stage sft --max-steps 3 --num-synthetic 16 --batch-size 2 --cpu)
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
"$python" -m torch.distributed.run --nproc_per_node 2 "${train[@]}" --output-dir "$out/ddp" > "$out/ddp.log" 2>&1
DS_ACCELERATOR=cpu "$python" -m accelerate.commands.launch --config_file examples/accelerate/zero3.yaml \
    --num_processes 2 "${train[@]}" --output-dir "$out/zero3" > "$out/zero3.log" 2>&1
for run in ddp zero3; do
    echo "$run losses: $(grep -o "'loss': '[0-9.e-]*'" "$out/$run.log" | cut -d"'" -f4 | tr '\n' ' ')"
done
"$python" - "$out" <<'PY'
import sys
from storm_hf import StormForConditionalGeneration
ddp, zero3 = (dict(StormForConditionalGeneration.from_pretrained(f"{sys.argv[1]}/{run}").named_parameters()) for run in ("ddp", "zero3"))
print(f"max |ddp - zero3| over {len(ddp)} saved tensors: {max((ddp[name] - zero3[name]).abs().max().item() for name in ddp):.2e}")
PY
