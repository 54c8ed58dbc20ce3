#!/usr/bin/env bash
# The GPU release of one variant, on the device machine, in the repository root with .release/ carried:
#   bash model_cards/release_run.sh gray 420        # variant, seconds for the whole run (pretraining gets ~40%)
# Installs the carried wheels, makes the package importable as it installs (dataset_scripts/ and training/ inside
# mednet_hf), pretrains, exports fp16 shards and runs the transfer benchmark; see release_run.py.
set -uo pipefail
variant=$1 total=${2:-420}
start=$SECONDS
OUT=${OUT:-runs/release-out}
mkdir -p "$OUT"
if [ -z "${SKIP_WHEELS:-}" ]; then  # SKIP_WHEELS=1: the CPU rehearsal here, where the venv has them (another Python)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .release/wheels/*.whl || exit 1
fi
# One import root, as setuptools' package-dir maps it, without building anything.
mkdir -p /tmp/pkg/mednet_hf
for f in mednet_hf/*; do ln -sfn "$PWD/$f" /tmp/pkg/mednet_hf/; done
ln -sfn "$PWD/dataset_scripts" /tmp/pkg/mednet_hf/builders
ln -sfn "$PWD/training" /tmp/pkg/mednet_hf/training
export PYTHONPATH=/tmp/pkg:/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HOME=/tmp/hf TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo "no GPU"
pretrain_s=$(( total * 2 / 5 - 60 > 5 ? total * 2 / 5 - 60 : 5 ))  # the rest: probe, start-up, export and the benchmark
# PRETRAIN_ARGS / BENCH_ARGS: extra options (the CPU rehearsal: --probe-steps 2 --min-steps 3; --seed 0 --epochs 1)
work=/tmp/mednet-release
mkdir -p "$work"
python3 model_cards/release_run.py pretrain --variant "$variant" --seconds "$pretrain_s" --work "$work" --out "$OUT" \
  ${PRETRAIN_ARGS:-} 2>&1 | grep -v "it/s]$" | tee "$work/$variant-pretrain.log" | tail -40
status=${PIPESTATUS[0]}
python3 model_cards/release_run.py records --variant "$variant" --work "$work" --out "$OUT"  # the record, even if what follows fails
[ "$status" -eq 0 ] || { echo "pretraining failed (exit $status): no benchmark" >&2; exit 1; }
left=$(( total - (SECONDS - start) - 30 ))
if [ "$left" -gt 30 ]; then
  echo "benchmark: ${left} s left"
  # SIGINT first: the study stops after the run in progress and writes what finished; -k: killed 20 s later if not
  timeout -k 20 --signal=INT "$left" python3 model_cards/release_run.py bench --variant "$variant" --work "$work" \
    --out "$OUT" ${BENCH_ARGS:-} 2>&1 | grep -v "it/s]$" | tee "$work/$variant-bench.log" | tail -40
else
  echo "benchmark skipped: only ${left} s left" >&2
fi
python3 model_cards/release_run.py records --variant "$variant" --work "$work" --out "$OUT"
ls -la "$OUT" "$OUT/$variant"
count=$(find "$OUT" -type f | wc -l)
[ "$count" -le 8 ] || echo "WARNING: $count files in \$OUT; only 8 come back" >&2
