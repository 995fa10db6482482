#!/usr/bin/env bash
# The GPU check (attention issue): on the GPU machine as it is, within about 8 minutes,
#   1. installs the wheels benchmarks/gpu_wheels.sh downloaded into .whl/ (carried there),
#   2. runs the attention golden tests on the GPU: cuDNN (tests/gpu_attention.py) and XLA
#      (tests/test_attention.py, splash's interpreted tests left out),
#   3. runs the bf16 throughput sweep, each row with `auto` attention and with `xla`,
#   4. prints one Markdown table (and writes it, with the JSON rows, under $OUT or /tmp).
#
#   bash benchmarks/gpu_wheels.sh                      # here, once: .whl/
#   bash benchmarks/gpu_check.sh                       # there (the device tool: carry .whl)
#   JAX_PLATFORMS=cpu bash benchmarks/gpu_check.sh --tiny   # the rehearsal on a CPU
#
# Targets (benchmarks, not tests): bert_base/128 >= 50% MFU, bert_large/512 >= 55%,
# modernbert_base/1024 >= 400k tokens/s, gpt2/1024 >= 50% MFU, on one H200 in bf16.
set -uo pipefail
cd "$(dirname "$0")/.."
TINY=0
[[ "${1:-}" == "--tiny" ]] && TINY=1
RESULTS="${OUT:-/tmp/gpu_check}"
mkdir -p "$RESULTS"
ROWS="$RESULTS/gpu_check.jsonl"
: > "$ROWS"
PY="${PYTHON:-python3}"

install() {  # the carried wheels, with no registry, into a temporary target
  "$1" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$2" .whl/*.whl
}
if compgen -G ".whl/*.whl" > /dev/null; then
  if [[ $("$PY" -c 'import sys; print(sys.version_info[:2] == (3, 12))') == True ]]; then
    install "$PY" /tmp/site || { echo "gpu_check: installing .whl/ failed"; exit 1; }
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  elif [[ $TINY == 1 && -n "${PYTHON312:-}" ]]; then  # rehearse the install line only
    rm -rf /tmp/site312
    install "$PYTHON312" /tmp/site312 && PYTHONPATH=/tmp/site312 "$PYTHON312" -c \
      'import zstandard, dill, multiprocess, portpicker; print("gpu_check: .whl/ installs under 3.12")' \
      || { echo "gpu_check: installing .whl/ under $PYTHON312 failed"; exit 1; }
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
"$PY" -c 'import jax; print("gpu_check:", jax.__version__, jax.devices())' || exit 1

# 2. Golden tests. conftest.py defaults JAX_PLATFORMS to cpu: name the GPU's platform here.
PLATFORM="${JAX_PLATFORMS:-cuda}"
if [[ $TINY == 1 ]]; then  # no cuDNN on a CPU: the GPU file must at least collect
  JAX_PLATFORMS=$PLATFORM timeout 120 "$PY" -m pytest -q -p no:cacheprovider \
    --collect-only tests/gpu_attention.py | tail -1
  TESTS=(tests/test_attention.py)
else
  TESTS=(tests/gpu_attention.py tests/test_attention.py)
fi
JAX_PLATFORMS=$PLATFORM timeout 240 "$PY" -m pytest -q -p no:cacheprovider -k "not splash" \
  "${TESTS[@]}" 2>&1 | tail -15
TESTS_RC=${PIPESTATUS[0]}

# 3. The sweep: preset, length, batch, extra flags; each with auto and with xla attention.
if [[ $TINY == 1 ]]; then
  SWEEP=("bert_tiny 64 8 " "bert_tiny 64 8 --no_attention_dropout"
         "modernbert_tiny 256 4 " "shakespeare_decoder 128 4 ")
  COMMON=(--steps=2 --precision=fp32)
  LIMIT=120
else
  SWEEP=("bert_base 128 256 " "bert_base 128 256 --no_attention_dropout"
         "bert_large 512 64 --no_attention_dropout" "modernbert_base 1024 32 "
         "gpt2 1024 16 " "gpt2 1024 16 --no_attention_dropout")
  COMMON=(--steps=10 --precision=bf16)
  LIMIT=100
fi
for row in "${SWEEP[@]}"; do
  read -r preset length batch extra <<< "$row"
  for attention in auto xla; do
    timeout "$LIMIT" "$PY" benchmarks/throughput.py --preset="$preset" --seq_len="$length" \
      --batch_size="$batch" --attention="$attention" ${extra:-} "${COMMON[@]}" 2>&1 \
      | grep '^{' | tail -1 >> "$ROWS" \
      || echo "{\"preset\": \"$preset\", \"seq_len\": $length, \"batch_size\": $batch, \"attention\": \"$attention\", \"failed\": true, \"extra\": \"${extra:-}\"}" >> "$ROWS"
  done
done

# 4. One table.
"$PY" - "$ROWS" "$RESULTS/gpu_check.md" "$TESTS_RC" <<'PYEOF'
import datetime, json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
lines = [f"GPU check {datetime.date.today()}: attention tests "
         + ("passed" if sys.argv[3] == "0" else f"FAILED (pytest exit {sys.argv[3]})"), "",
         "| preset | tokens | batch | attn dropout | attention | kernels | tokens/s | MFU "
         "| peak memory (GiB) | auto / xla |", "|---|---|---|---|---|---|---|---|---|---|"]
by = {}
for r in rows:
  key = (r["preset"], r["seq_len"], r["batch_size"], r.get("attention_dropout", r.get("extra")))
  by.setdefault(key, {})[r["attention"]] = r
for key, pair in by.items():
  for name in ("auto", "xla"):
    r = pair.get(name)
    if r is None:
      continue
    if r.get("failed"):
      lines.append(f"| {key[0]} | {key[1]} | {key[2]} | | {name} | failed or timed out | | | | |")
      continue
    ratio = ""
    if name == "auto" and "xla" in pair and not pair["xla"].get("failed"):
      ratio = f"{r['tokens_per_sec'] / pair['xla']['tokens_per_sec']:.2f}x"
    mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else ""
    mem = (f"{r['peak_memory_bytes'] / 2**30:.1f}" if r.get("peak_memory_bytes") else "")
    lines.append(f"| {r['preset']} | {r['seq_len']} | {r['batch_size']} | "
                 f"{r['attention_dropout']} | {name} | {r['kernels']} | "
                 f"{r['tokens_per_sec']:,.0f} | {mfu} | {mem} | {ratio} |")
text = "\n".join(lines)
open(sys.argv[2], "w").write(text + "\n")
print(text)
PYEOF
