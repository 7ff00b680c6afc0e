#!/bin/sh
# tools/gpu_check.sh — everything the GPU build must show, in one command on a GPU machine.
#
# Needs, in the repository root there: ./moert-nvidia and build/nvidia/test_runner (built
# elsewhere with `make hip-nvidia` and carried), tests/fixtures and configs/.  Runs, each
# step under a time limit and logged:
#   1. smoke      one small model on the GPU (fails fast on a broken build or device)
#   2. check-fix  MOERT_HIP_CHECK=all on every tests/fixtures/hf model and on GGUF models of
#                 every block type (gqa4-hd24's shape synthesized as q4_0, q5_0, q4_k_m, q6_k;
#                 llama.cpp's gguf-tiny and gguf-vocab when $MOERT_SHARED_REFERENCE or
#                 ../shared/reference holds them): each op's GPU output against the CPU kernels
#                 on identical inputs (names the first bad op); then the GGUF models again
#                 with --numerics act-q8, against the CPU's act-q8 kernels (row check-q8)
#   3. tests      the CUnit suites `hip` and `forward` (MOERT_TEST_BACKEND=hip)
#   4. check-big  MOERT_HIP_CHECK=all on configs/bench-gpu.yaml's shapes (synth weights,
#                 100-token prompt in chunks of 64, 3 decode steps)
#   4b. attn      prefill attention on query tiles == the row kernel (MOERT_HIP_ATTN=row), bit
#                 for bit: tensor traces of every position of each fixture (100 tokens in one
#                 chunk and in chunks of 37), stats traces of a 512-token prefill at bench shapes
#   5. trace      decode steps' trace captures (at the step end) against inline captures
#                 (MOERT_HIP_TRACE_INLINE=1): the trace files are identical, stats and tensor
#                 mode, every stage of every layer (inline captures also keep the decode
#                 fusions apart, so this holds the fused step to the kernels apart at bench
#                 shapes); with BASE_BIN=another moert-nvidia (say the
#                 last commit's), also its records against this binary's (in the modes of
#                 BASE_MODES, default stats): identical but for the manifest's build facts
#   6. bench      moert bench configs/bench-gpu.yaml --json --trace-overhead
#   6b. bench-bi  bench-gpu decode and prefill with --batch-invariant on against off, alternated
#                 (64 generated tokens, one run each; the bit-identity itself is suite hip's
#                 batch-invariance tests, in step 3)
#   7. bench48    the same on configs/bench-gpu-48.yaml (Qwen3-30B-A3B's 48 layers, 61 GB)
#   8. bench-q    bench-gpu's shapes as Q8_0 and Q4_K_M GGUF files (synthesized): decode and
#                 prefill in each numerics mode (exact, act-q8; a mode the binary refuses is a
#                 named skip) against issue 13's targets: decode >= 2x, prefill >= 1x llama.cpp's
#                 (BENCHQ_MODES= picks modes; BENCHQ_GGUF_DIR= takes q8_0.gguf and q4_k_m.gguf
#                 made earlier by `synth configs/bench-gpu.yaml --format gguf` instead); first
#                 the X4 row regrouping against the file layout (MOERT_HIP_X4=0), bit for bit
# and prints a summary table last (figures against the targets of issue 13).  Logs go to
# $OUT when set (8 files: the device tool returns no more), else to build/gpu-check.
# GPU_CHECK_STEPS="smoke tests" runs a subset.
set -u

BIN=${BIN:-./moert-nvidia}
RUNNER=${RUNNER:-build/nvidia/test_runner}
LOG=${OUT:-build/gpu-check}
STEPS=${GPU_CHECK_STEPS:-"smoke check-fix tests check-big attn trace bench bench-bi bench48 bench-q"}
mkdir -p "$LOG"
SUMMARY="$LOG/summary.txt"
: >"$SUMMARY"
: >"$LOG/bench.err"

want() { case " $STEPS " in *" $1 "*) return 0 ;; esac; return 1; }
row() { printf '%-10s %-6s %s\n' "$1" "$2" "$3" >>"$SUMMARY"; }

if [ ! -x "$BIN" ]; then
    echo "gpu_check: $BIN is missing (run \`make hip-nvidia\` and carry it)" >&2
    exit 2
fi
if command -v nvidia-smi >/dev/null 2>&1; then
    GPU=$({ nvidia-smi -L; nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv; } 2>&1)
else
    GPU="no nvidia-smi"
fi
echo "$GPU"
: >"$LOG/runs.log"

IDS13=11,48,85,122,159,196,233,250,7,44,81,118,155
IDS100=$(seq -s, 1 100)

# 1. smoke
if want smoke; then
    if timeout 120 "$BIN" run tests/fixtures/hf/long-prompt --backend hip --tokens "$IDS13" -n 8 \
        >"$LOG/smoke.tmp" 2>&1; then
        row smoke ok "$(head -c 120 "$LOG/smoke.tmp" | tr '\n' ' ')"
    else
        row smoke FAIL "rc=$? $(tail -c 300 "$LOG/smoke.tmp" | tr '\n' ' ')"
    fi
    { echo "== smoke"; cat "$LOG/smoke.tmp"; } >>"$LOG/runs.log"
    rm -f "$LOG/smoke.tmp"
fi

# 2. per-op check on the fixtures
if want check-fix; then
    : >"$LOG/check-fixtures.log"
    bad=0
    GG=${TMPDIR:-/tmp}/moert-gpu-check-gguf
    mkdir -p "$GG"
    models=""
    for m in q4_0 q5_0 q4_k_m q6_k; do
        "$BIN" synth tests/fixtures/hf/gqa4-hd24 --format gguf --dtype $m --out "$GG/gqa4-hd24-$m.gguf" \
            >>"$LOG/check-fixtures.log" 2>&1 && models="$models $GG/gqa4-hd24-$m.gguf"
    done
    SHARED=${MOERT_SHARED_REFERENCE:-../shared/reference}
    for f in "$SHARED"/gguf-tiny/model-*.gguf "$SHARED"/gguf-vocab/model-*.gguf; do
        [ -f "$f" ] && models="$models $f"
    done
    for d in tests/fixtures/hf/*/ $models; do
        echo "== $d" >>"$LOG/check-fixtures.log"
        MOERT_HIP_CHECK=all timeout 120 "$BIN" run "$d" --backend hip --tokens "$IDS13" -n 4 \
            --prefill-chunk 5 >>"$LOG/check-fixtures.log" 2>&1 || bad=$((bad + 1))
    done
    mism=$(grep -c ' -> ' "$LOG/check-fixtures.log")
    if [ "$bad" -eq 0 ] && [ "$mism" -eq 0 ]; then
        row check-fix ok "every op of every fixture and GGUF model within 1e-4 of the CPU kernels"
    else
        row check-fix FAIL "$bad runs failed, $mism op mismatches; first: $(grep -m1 ' -> \|error\|backend hip' "$LOG/check-fixtures.log" | cut -c1-200)"
    fi
    # numerics act-q8 on the GGUF models: each op against the CPU's act-q8 kernels
    q8log=${TMPDIR:-/tmp}/moert-gpu-check-actq8.log
    : >"$q8log"
    qbad=0
    for d in $models; do
        echo "== $d (act-q8)" >>"$q8log"
        MOERT_HIP_CHECK=all timeout 120 "$BIN" run "$d" --backend hip --numerics act-q8 --tokens "$IDS13" -n 4 \
            --prefill-chunk 5 >>"$q8log" 2>&1 || qbad=$((qbad + 1))
    done
    qmism=$(grep -c ' -> ' "$q8log")
    cat "$q8log" >>"$LOG/check-fixtures.log"
    if [ "$qbad" -eq 0 ] && [ "$qmism" -eq 0 ]; then
        row check-q8 ok "act-q8: every op of every GGUF model within 1e-4 of the CPU's act-q8 kernels"
    else
        row check-q8 FAIL "act-q8: $qbad runs failed, $qmism op mismatches; first: $(grep -m1 ' -> \|error\|backend hip' "$q8log" | cut -c1-200)"
    fi
fi

# 3. test suites
if want tests; then
    if [ -x "$RUNNER" ]; then
        MOERT_TEST_BACKEND=hip timeout 600 "$RUNNER" hip forward >"$LOG/tests.log" 2>&1
        rc=$?
        line="$(grep -E 'tests run|asserts' "$LOG/tests.log" | tail -2 | tr -s ' ' | tr '\n' ' ')$(grep -c 'SKIP ' "$LOG/tests.log") skipped"

        [ $rc -eq 0 ] && row tests ok "$line" || row tests FAIL "rc=$rc $line"
    else
        row tests skip "$RUNNER missing"
    fi
fi

# configs/bench-gpu*.yaml name a tokenizer under build/ (not carried): use copies without it.
notok() {
    if [ -s build/tokenizer/qwen3/tokenizer.json ]; then
        echo "configs/$1.yaml"
    else
        grep -v '^tokenizer:' "configs/$1.yaml" >"configs/.$1-notok.yaml"
        echo "configs/.$1-notok.yaml"
    fi
}
BENCH_CFG=$(notok bench-gpu)
BENCH48_CFG=$(notok bench-gpu-48)

# 4. per-op check at the benchmark's shapes
if want check-big; then
    MOERT_HIP_CHECK=all timeout 580 "$BIN" run "$BENCH_CFG" --backend hip --tokens "$IDS100" -n 3 \
        --prefill-chunk 64 --max-seq-len 128 >"$LOG/check-big.log" 2>&1
    rc=$?
    mism=$(grep -c ' -> ' "$LOG/check-big.log")
    if [ $rc -eq 0 ] && [ "$mism" -eq 0 ]; then
        row check-big ok "$(grep -c 'hip check: step' "$LOG/check-big.log") steps, every op within 1e-4"
    else
        row check-big FAIL "rc=$rc, $mism mismatches; first: $(grep -m1 ' -> \|error\|backend hip' "$LOG/check-big.log" | cut -c1-200)"
    fi
fi

# 4b. prefill attention: query tiles == the row kernel, bit for bit
if want attn; then
    TA=${TMPDIR:-/tmp}/moert-gpu-check-attn
    mkdir -p "$TA"
    ok=1
    n=0
    for d in tests/fixtures/hf/*/; do
        for ch in 100 37; do
            for v in tile row; do
                MOERT_HIP_ATTN=$v timeout 60 "$BIN" run "$d" --backend hip --tokens "$IDS100" -n 2 --prefill-chunk $ch \
                    --trace "$TA/$v.trace" --trace-mode tensor --trace-positions all >>"$LOG/runs.log" 2>&1 || ok=0
            done
            cmp "$TA/tile.trace" "$TA/row.trace" >>"$LOG/runs.log" 2>&1 || ok=0
            n=$((n + 1))
        done
    done
    IDS512=$(seq -s, 1 512)
    for v in tile row; do
        MOERT_HIP_ATTN=$v timeout 120 "$BIN" run "$BENCH_CFG" --backend hip --tokens "$IDS512" -n 2 \
            --trace "$TA/$v.trace" --trace-positions all >>"$LOG/runs.log" 2>&1 || ok=0
    done
    cmp "$TA/tile.trace" "$TA/row.trace" >>"$LOG/runs.log" 2>&1 || ok=0
    rm -rf "$TA"
    if [ $ok -eq 1 ]; then
        row attn ok "prefill attention on query tiles == row kernel, bit for bit ($n fixture runs, tensor; bench shapes, 512 tokens, stats)"
    else
        row attn FAIL "see runs.log: $(tail -c 200 "$LOG/runs.log" | tr '\n' ' ')"
    fi
fi

# Two trace files of different binaries hold the same records: the same tensors, bytes and
# manifest but for its "build" (the commit differs).
trace_same() {
    python3 - "$1" "$2" <<'EOF'
import json, struct, sys
def load(p):
    b = open(p, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    m = h.pop("__metadata__", {})
    if "manifest" in m:
        j = json.loads(m["manifest"])
        j.pop("build", None)
        m["manifest"] = j
    return h, m, b[8 + n:]
a, b = load(sys.argv[1]), load(sys.argv[2])
same = a == b
print("%s %s %s (%d data bytes)" % (sys.argv[1], "==" if same else "DIFFERS FROM", sys.argv[2], len(a[2])))
sys.exit(0 if same else 1)
EOF
}

# 5. trace captures: at the end of each decode step == inline (at each TRACE op), bit for bit
if want trace; then
    TT=${TMPDIR:-/tmp}/moert-gpu-check-trace
    mkdir -p "$TT"
    ok=1
    based=""
    for mode in stats tensor; do
        timeout 120 "$BIN" run "$BENCH_CFG" --backend hip --tokens "$IDS13" -n 8 --trace "$TT/batch-$mode.trace" \
            --trace-mode $mode >>"$LOG/runs.log" 2>&1 || ok=0
        MOERT_HIP_TRACE_INLINE=1 timeout 120 "$BIN" run "$BENCH_CFG" --backend hip --tokens "$IDS13" -n 8 \
            --trace "$TT/inline-$mode.trace" --trace-mode $mode >>"$LOG/runs.log" 2>&1 || ok=0
        cmp "$TT/batch-$mode.trace" "$TT/inline-$mode.trace" >>"$LOG/runs.log" 2>&1 || ok=0
        ls -l "$TT/batch-$mode.trace" "$TT/inline-$mode.trace" >>"$LOG/runs.log" 2>&1
        [ -n "${BASE_BIN:-}" ] || continue
        case " ${BASE_MODES:-stats} " in *" $mode "*) ;; *) continue ;; esac
        timeout 120 "$BASE_BIN" run "$BENCH_CFG" --backend hip --tokens "$IDS13" -n 8 --trace "$TT/base-$mode.trace" \
            --trace-mode $mode >>"$LOG/runs.log" 2>&1 || ok=0
        trace_same "$TT/base-$mode.trace" "$TT/batch-$mode.trace" >>"$LOG/runs.log" 2>&1 || ok=0
        based="$based $mode"
    done
    rm -rf "$TT"
    if [ $ok -eq 1 ]; then
        row trace ok "decode captures at the step end == inline captures, bit for bit (stats, tensor)${based:+; == BASE_BIN's records:$based}"
    else
        row trace FAIL "see runs.log: $(tail -c 200 "$LOG/runs.log" | tr '\n' ' ')"
    fi
fi

# bench figures against the targets (decode: a fraction of the copy-bandwidth roofline)
bench_row() {
    python3 - "$1" "$2" "$3" <<'EOF' 2>/dev/null
import json, sys
j = json.load(open(sys.argv[1]))
frac, pp = float(sys.argv[2]), float(sys.argv[3])
bw = j.get("memory_bandwidth_GBps", 0)
act = j.get("active_weight_bytes_per_token", 1)
target = frac * bw * 1e9 / act if act else 0
print("decode %.0f tok/s = %.1f%% of roofline (target >= %.0f%%: %.0f) | prefill %.0f tok/s (target >= %.0f) | "
      "traced decode %.0f tok/s (%+.1f%%, target <= +5%%)" % (
      j.get("decode_tokens_per_s", 0), 100 * j.get("roofline_fraction", 0), 100 * frac, target,
      j.get("prefill_tokens_per_s", 0), pp,
      j.get("traced_decode_tokens_per_s", 0), 100 * j.get("trace_decode_overhead", 0)))
EOF
}

# 6. bench (12 layers), 7. bench48 (48 layers)
for b in bench bench48; do
    want $b || continue
    if [ $b = bench ]; then cfg=$BENCH_CFG frac=0.70 pp=20000; else cfg=$BENCH48_CFG frac=0.65 pp=9000; fi
    timeout 590 "$BIN" bench "$cfg" --json --trace-overhead >"$LOG/$b.json" 2>>"$LOG/bench.err"
    rc=$?
    if [ $rc -eq 0 ]; then
        sum=$(bench_row "$LOG/$b.json" $frac $pp)
        row $b ok "${sum:-see $b.json}"
    else
        row $b FAIL "rc=$rc $(tail -c 300 "$LOG/bench.err" | tr '\n' ' ')"
    fi
done

# 6b. what batch invariance costs: decode steps on the prefill kernels
if want bench-bi; then
    : >"$LOG/bench-bi.json"
    ok=1
    for bi in off on off on; do
        if timeout 200 "$BIN" bench "$BENCH_CFG" --gen 64 --repeat 1 --batch-invariant $bi --json \
            >"$LOG/bench-bi.tmp" 2>>"$LOG/bench.err"; then
            { echo "== batch-invariant $bi"; cat "$LOG/bench-bi.tmp"; } >>"$LOG/bench-bi.json"
        else
            ok=0
        fi
    done
    rm -f "$LOG/bench-bi.tmp"
    sum=$(python3 - "$LOG/bench-bi.json" <<'EOF' 2>/dev/null
import json, re, sys
runs = {"off": [], "on": []}
for part in re.split(r"^== batch-invariant ", open(sys.argv[1]).read(), flags=re.M)[1:]:
    mode, body = part.split("\n", 1)
    j = json.loads(body)
    runs[mode].append((j["decode_tokens_per_s"], j["prefill_tokens_per_s"]))
best = {m: (max(r[0] for r in v), max(r[1] for r in v)) for m, v in runs.items()}
print("decode %.0f tok/s on vs %.0f off (%.0f%% slower) | prefill %.0f vs %.0f"
      % (best["on"][0], best["off"][0], 100 * (1 - best["on"][0] / best["off"][0]), best["on"][1], best["off"][1]))
EOF
)
    if [ $ok = 1 ] && [ -n "$sum" ]; then
        row bench-bi ok "$sum"
    else
        row bench-bi FAIL "$(tail -c 300 "$LOG/bench.err" | tr '\n' ' ')"
    fi
fi

# 8. quantized weights at speed.  llama.cpp b10573 on an H200 (issue 13's table, 2026-12-01,
# `llama-bench -ngl 99 -fa 1 -p 512 -n 128` on the same weights): decode / prefill tok/s.
if want bench-q; then
    QG=${TMPDIR:-/tmp}/moert-gpu-check-q
    mkdir -p "$QG"
    : >"$LOG/bench-q.json"
    for q in "q8_0 904 35967" "q4_k_m 923 33310"; do
        set -- $q
        t=$1 lc_tg=$2 lc_pp=$3
        if [ -n "${BENCHQ_GGUF_DIR:-}" ]; then
            cp "$BENCHQ_GGUF_DIR/$t.gguf" "$QG/$t.gguf" 2>>"$LOG/bench.err" || {
                row "q-$t" FAIL "no $BENCHQ_GGUF_DIR/$t.gguf"
                continue
            }
        elif ! timeout 300 "$BIN" synth "$BENCH_CFG" --format gguf --dtype "$t" --out "$QG/$t.gguf" \
            >>"$LOG/bench.err" 2>&1; then
            row "q-$t" FAIL "synth: $(tail -c 200 "$LOG/bench.err" | tr '\n' ' ')"
            continue
        fi
        # the X4 regrouping (hip_kernels.h) against the file layout: every stage of every layer
        # of a prompt and 3 decode steps, bit for bit, in each numerics mode
        x4ok=1
        for mode in exact act-q8; do
            for x4 in 0 1; do
                MOERT_HIP_X4=$x4 timeout 120 "$BIN" run "$BENCH_CFG" --weights "$QG/$t.gguf" --backend hip --numerics $mode \
                    --tokens "$IDS13" -n 4 --ignore-eos --trace "$QG/x4-$x4.trace" --trace-mode tensor \
                    >>"$LOG/runs.log" 2>&1 || x4ok=0
            done
            cmp "$QG/x4-0.trace" "$QG/x4-1.trace" >>"$LOG/runs.log" 2>&1 || x4ok=0
        done
        rm -f "$QG"/x4-*.trace
        if [ $x4ok = 1 ]; then
            row "x4-$t" ok "regrouped rows (MOERT_HIP_X4=1) == file layout (=0), bit for bit: tensor traces, exact and act-q8"
        else
            row "x4-$t" FAIL "see runs.log: $(tail -c 200 "$LOG/runs.log" | tr '\n' ' ')"
        fi
        for mode in ${BENCHQ_MODES:-exact act-q8}; do
            : >"$LOG/bench-q.err"
            if timeout 300 "$BIN" bench "$BENCH_CFG" --weights "$QG/$t.gguf" --numerics $mode --json \
                >"$QG/bench.json" 2>"$LOG/bench-q.err"; then
                { echo "== $t $mode"; cat "$QG/bench.json"; } >>"$LOG/bench-q.json"
                sum=$(python3 - "$QG/bench.json" "$lc_tg" "$lc_pp" <<'EOF' 2>/dev/null
import json, sys
j = json.load(open(sys.argv[1]))
tg, pp = float(sys.argv[2]), float(sys.argv[3])
d, p = j.get("decode_tokens_per_s", 0), j.get("prefill_tokens_per_s", 0)
print("decode %.0f tok/s = %.2fx llama.cpp (target >= 2x: %.0f) | prefill %.0f tok/s = %.2fx (target >= 1x: %.0f)"
      % (d, d / tg, 2 * tg, p, p / pp, pp))
EOF
)
                row "q-$t" ok "$mode: ${sum:-see bench-q.json}"
            elif [ $mode = act-q8 ] && grep -q "act-q8" "$LOG/bench-q.err"; then
                row "q-$t" skip "$mode refused by this binary: $(tail -c 120 "$LOG/bench-q.err" | tr '\n' ' ')"
            else
                row "q-$t" FAIL "$mode: $(tail -c 200 "$LOG/bench-q.err" | tr '\n' ' ')"
            fi
            cat "$LOG/bench-q.err" >>"$LOG/bench.err"
            rm -f "$LOG/bench-q.err"
        done
        rm -f "$QG/$t.gguf"
    done
    rm -rf "$QG"
fi

echo
echo "== gpu_check summary ($(echo "$GPU" | head -1))"
cat "$SUMMARY"
{ echo "$GPU"; cat "$SUMMARY"; } >"$SUMMARY.tmp" && mv "$SUMMARY.tmp" "$SUMMARY"
! grep -q ' FAIL ' "$SUMMARY"
