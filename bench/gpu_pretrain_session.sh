#!/usr/bin/env bash
# The pretraining measurements for one lease of a GPU machine (the device tool), back to back in
# one command so the variants share the machine and its clocks. Writes JSON (and a kernel profile)
# to $OUT; copy what comes back into bench/results/ and the table in bench/README.md.
#   bash bench/gpu_pretrain_session.sh            # on the GPU machine, from the repository root
set -uo pipefail
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee "$OUT/device.txt"
bench() { local name=$1; shift; echo "== $name: $*"; "$@" --out "$OUT/$name.json" >/dev/null || echo "$name failed"; }
# MLM: the compiled path (layers, head and loss), then the same at batch 512 and with Inductor's GEMM autotuning.
bench pretrain_mlm_compile "$PY" bench/pretrain_throughput.py --compile --objectives mlm
bench pretrain_mlm_compile_b512 "$PY" bench/pretrain_throughput.py --compile --objectives mlm --batch-size 512
TORCHINDUCTOR_MAX_AUTOTUNE=1 bench pretrain_mlm_compile_autotune "$PY" bench/pretrain_throughput.py --compile --objectives mlm
# TSDAE beside it, eager (its decoder is not compiled).
bench pretrain_tsdae "$PY" bench/pretrain_throughput.py --objectives tsdae
# Where the compiled MLM step spends its GPU time.
"$PY" bench/profile_pretrain.py --compile --rows 30 >"$OUT/profile_mlm_compile.txt" 2>&1 || echo "profile failed"
for f in "$OUT"/*.json; do "$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); [print(sys.argv[1], r['objective'], r['tokens_per_s'], r['step_ms'], r['mfu']) for r in d['results']]" "$f"; done
