#!/bin/sh
# The deviation of numerics act-q8 from exact mode (BENCHMARKS.md "act-q8"): for each GGUF,
# tensor traces of the same prompt in both modes, then `moert diff` of the two (per stage
# relative L2 and max abs error, greedy tokens), and of each against the HF float64
# reference where ../shared has one.  Usage: tools/act-q8-deviation.sh [OUTDIR]
cd "$(dirname "$0")/.."
out=${1:-build/act-q8-deviation}
mkdir -p "$out"
summary() { # diff --json on stdin -> worst stage, logits, routing, (with "gen") greedy tokens
  python3 -c "
gen='$1'=='gen'

import json,sys; r=json.load(sys.stdin); st=r['stages']
v=[s for s in st if s.get('compared')=='values' and 'rel_err' in s]
w=max(v,key=lambda s:s['rel_err'])
lg=[s for s in v if s['name']=='logits']
rt=[s for s in st if 'topk_agreement' in s]
print('  worst stage %-18s rel %.3e max_abs %.3e' % (w['name'], w['rel_err'], w['max_abs']))
if lg: print('  logits             rel %.3e max_abs %.3e' % (lg[0]['rel_err'], lg[0]['max_abs']))
if rt: print('  router top-k agreement (min over layers) %.4f' % min(s['topk_agreement'] for s in rt))
if 'generated_ids_differ_at' in r: print('  greedy ids part at step', r['generated_ids_differ_at'])
elif gen: print('  greedy ids identical')
"
}
ids() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['$2'])" "$1"; }
for t in q8_0 q4_k_m q5_k_m q6_k; do
  g=../shared/reference/gguf-tiny/model-$t.gguf
  ref=../shared/reference/gguf-tiny/ref-$t
  [ -f "$g" ] || { echo "skip gguf-tiny $t: $g absent"; continue; }
  p=$(python3 -c "import json; print(','.join(map(str, json.load(open('$ref/reference.json'))['prompt_ids'])))")
  for m in exact act-q8; do
    ./moert run "$g" --tokens "$p" -n 0 --numerics $m --trace-mode tensor --trace-positions all --trace "$out/tiny-$t-$m-prompt.trace" >/dev/null 2>&1
    ./moert run "$g" --tokens "$p" -n 12 --ignore-eos --numerics $m --json 2>/dev/null |
      python3 -c "import json,sys; print(json.load(sys.stdin)['generated_ids'])" > "$out/tiny-$t-$m.ids"
  done
  echo "== gguf-tiny $t: act-q8 vs exact (prompt of 13, every position)"
  ./moert diff "$out/tiny-$t-act-q8-prompt.trace" "$out/tiny-$t-exact-prompt.trace" --json 2>/dev/null | summary
  echo "  act-q8 vs the HF float64 reference:"
  ./moert diff "$out/tiny-$t-act-q8-prompt.trace" "$ref/reference.safetensors" --json 2>/dev/null | summary
  echo "  greedy 12: exact $(cat "$out/tiny-$t-exact.ids")"
  echo "             act-q8 $(cat "$out/tiny-$t-act-q8.ids")"
  echo "             reference $(ids "$ref/reference.json" greedy_ids)"
  echo "             llama.cpp $(ids "$ref/reference.json" llamacpp_greedy_ids) (its prompt logits rel err $(ids "$ref/reference.json" llamacpp_prompt_logits_rel_err))"
done
for t in q4_k_m q8_0; do
  g=build/models/bench-cpu-$t.gguf
  [ -f "$g" ] || { echo "skip bench-cpu $t: $g absent"; continue; }
  for m in exact act-q8; do
    ./moert run configs/bench-cpu.yaml --weights "$g" --tokens 1000,2000,3000,4000,5000,6000,7000,8000,9000,10000,11000,12000,13000,14000,15000,16000 \
      -n 16 --ignore-eos --numerics $m --trace-mode tensor --trace-positions all --trace "$out/bench-$t-$m.trace" >/dev/null 2>&1
  done
  echo "== bench-cpu $t: act-q8 vs exact (prompt of 16, 16 greedy tokens, every position)"
  ./moert diff "$out/bench-$t-act-q8.trace" "$out/bench-$t-exact.trace" --json 2>/dev/null | summary gen
done
