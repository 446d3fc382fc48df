#!/usr/bin/env bash
# GPU check for a lent GPU machine (under 8 minutes): the default run with hardware=gpu and
# hardware=qlora on llama-small; prints tokens/s and peak GPU memory for each.
#   bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
make install >/dev/null
PY=.venv/bin/python
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
out=$(mktemp -d)
for hw in gpu qlora; do
  start=$(date +%s.%N)
  $PY -m alignlab hardware=$hw hydra.run.dir="$out/$hw" >"$out/$hw.log" 2>&1 \
    || { echo "hardware=$hw FAILED"; tail -20 "$out/$hw.log"; continue; }
  end=$(date +%s.%N)
  $PY - "$out/$hw" "$start" "$end" "$hw" <<'PY'
import json, sys
run, start, end, hw = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
m = json.load(open(f"{run}/metrics.json"))
tokens = max((e.get("num_tokens", 0) for e in m["log_history"]), default=0)
secs = m["train"].get("train_runtime", end - start)
print(f"| {hw} | {tokens / secs:,.0f} tokens/s | peak {m.get('peak_gpu_mib', 0):,.0f} MiB | "
      f"toy judge {m.get('judge', {}).get('score', float('nan')):.3f} | wall {end - start:.0f} s |")
PY
done
