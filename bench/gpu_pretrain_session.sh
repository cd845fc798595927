#!/usr/bin/env bash
# The pending pretraining measurements for one lease of a GPU machine (the device tool), run back to
# back so the variants share the machine and its clocks. JSON (and a kernel profile) go to $OUT;
# copy them into bench/results/ and the table in bench/README.md.
#   bash bench/gpu_pretrain_session.sh                   # every variant (about 10 minutes on an H100)
#   bash bench/gpu_pretrain_session.sh compile b512      # some of them, e.g. to fit one call's limit
set -uo pipefail
OUT=${OUT:-bench/results/gpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader >"$OUT/device.txt" 2>&1
bench() { local name=$1; shift; echo "== $name: $*" >&2; "$@" --out "$OUT/$name.json" >/dev/null || echo "$name failed" >&2; }
tp=(bench/pretrain_throughput.py --objectives)
run() {
  case $1 in
    compile)    bench pretrain_mlm_compile "$PY" "${tp[@]}" mlm --compile ;;   # layers, head and loss compiled
    b512)       bench pretrain_mlm_compile_b512 "$PY" "${tp[@]}" mlm --compile --batch-size 512 ;;
    autotune)   TORCHINDUCTOR_MAX_AUTOTUNE=1 bench pretrain_mlm_compile_autotune "$PY" "${tp[@]}" mlm --compile ;;
    cudagraphs) TORCHINDUCTOR_CUDAGRAPHS=1 bench pretrain_mlm_compile_cudagraphs "$PY" "${tp[@]}" mlm --compile ;;
    tsdae)      bench pretrain_tsdae "$PY" "${tp[@]}" tsdae ;;
    profile)    "$PY" bench/profile_pretrain.py --compile --rows 30 >"$OUT/profile_mlm_compile.txt" 2>&1 \
                  || echo "profile failed" >&2 ;;
    *)          echo "unknown variant '$1' (compile b512 autotune cudagraphs tsdae profile)" >&2; exit 2 ;;
  esac
}
for v in "${@:-compile b512 autotune cudagraphs tsdae profile}"; do for w in $v; do run "$w"; done; done
for f in "$OUT"/*.json; do
  [ -e "$f" ] && "$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); [print(sys.argv[1], r['objective'], r['tokens_per_s'], r['step_ms'], r['mfu']) for r in d['results']]" "$f"
done
