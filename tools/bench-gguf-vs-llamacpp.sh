#!/bin/sh
# moert bench and llama.cpp's llama-bench alternating on the same GGUF files (bench-cpu's
# weights, 2 threads, prompt 512): BENCHMARKS.md's GGUF table.  Each round runs llama.cpp,
# then moert in exact mode, then moert with --numerics act-q8 (MODES="exact act-q8" by
# default; ROUNDS=3, TYPES="q8_0 q4_k_m").  Needs ./moert, the files
#   ./moert synth configs/bench-cpu.yaml --format gguf --dtype q8_0 --out build/models/bench-cpu-q8_0.gguf
#   (and q4_k_m), and LLAMA_BENCH=/path/to/llama-bench (llama.cpp b10573, CPU build).
cd "$(dirname "$0")/.."
LB=${LLAMA_BENCH:-/tmp/llama/build/bin/llama-bench}
for r in $(seq 1 ${ROUNDS:-3}); do
  for t in ${TYPES:-q8_0 q4_k_m}; do
    f=build/models/bench-cpu-$t.gguf
    echo "== round $r $t llama.cpp"
    $LB -m $f -t 2 -p 512 -n 64 -r 2 -o json 2>/dev/null | python3 -c "import json,sys; [print(x['n_prompt'],x['n_gen'],round(x['avg_ts'],1),round(x['stddev_ts'],1)) for x in json.load(sys.stdin)]"
    for m in ${MODES:-exact act-q8}; do
      echo "== round $r $t moert $m ($(cut -d' ' -f1-3 /proc/loadavg) load)"
      ./moert bench configs/bench-cpu.yaml --weights $f --gen 64 --repeat 2 --numerics $m --json 2>/dev/null | python3 -c "
import json,sys; o=json.load(sys.stdin)
print({k:o[k] for k in o if k in ('numerics','prefill_tokens_per_s','decode_tokens_per_s','roofline_fraction','memory_bandwidth_GBps','active_weight_bytes_per_token')})"
    done
  done
done
