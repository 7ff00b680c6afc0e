#!/bin/sh
# tools/bench_ab.sh — moert bench of several variants on one config, alternated round by
# round (shared machines are noisy: compare ratios taken in one run), one table at the end.
#
#   sh tools/bench_ab.sh [-r ROUNDS] CONFIG 'LABEL=COMMAND' ... [-- BENCH-ARGS...]
#
# COMMAND runs a moert binary, with environment settings in front if wanted:
#   sh tools/bench_ab.sh -r 2 configs/bench-gpu.yaml 'base=./base/moert-nvidia' \
#       'new=./moert-nvidia' 'nofuse=env MOERT_HIP_DECFUSE=0 ./moert-nvidia' -- --gen 64
# Each run is `COMMAND bench CONFIG --json --repeat 1 BENCH-ARGS`; the decode and prefill
# tok/s come from the JSON it prints (a run that fails or prints no figures is named and
# counts as a failure: exit 1).  Rows: every run in order; then per variant the median and
# its ratio to the first variant's.
set -u
rounds=2
if [ "${1:-}" = -r ]; then
    rounds=${2:?-r needs a count}
    shift 2
fi
cfg=${1:?usage: bench_ab.sh [-r ROUNDS] CONFIG LABEL=COMMAND ... [-- BENCH-ARGS]}
shift
n=0
while [ $# -gt 0 ] && [ "$1" != -- ]; do
    case $1 in *=*) ;; *) echo "bench_ab: '$1' is not LABEL=COMMAND" >&2; exit 2 ;; esac
    n=$((n + 1))
    eval "label_$n=\${1%%=*}; cmd_$n=\${1#*=}"
    shift
done
[ "${1:-}" = -- ] && shift
[ $n -ge 1 ] || { echo "bench_ab: no variants" >&2; exit 2; }
case $rounds in '' | *[!0-9]*) echo "bench_ab: -r wants a number" >&2; exit 2 ;; esac
tmp=$(mktemp -d) || exit 2
trap 'rm -rf "$tmp"' EXIT
status=0
printf '%-12s %5s %12s %12s\n' variant round decode prefill
r=1
while [ $r -le "$rounds" ]; do
    i=1
    while [ $i -le $n ]; do
        eval "label=\$label_$i; cmd=\$cmd_$i"
        # shellcheck disable=SC2086 # COMMAND is split on purpose
        if $cmd bench "$cfg" --json --repeat 1 "$@" >"$tmp/out.json" 2>"$tmp/err.txt" &&
            python3 - "$tmp/out.json" >"$tmp/fig" 2>>"$tmp/err.txt" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print("%.1f %.1f" % (d["decode_tokens_per_s"], d["prefill_tokens_per_s"]))
PY
        then
            read -r dec pre <"$tmp/fig"
            printf '%-12s %5d %12s %12s\n' "$label" $r "$dec" "$pre"
            echo "$dec $pre" >>"$tmp/v$i"
        else
            printf '%-12s %5d %12s %12s   FAILED: %s\n' "$label" $r - - "$(tail -c 160 "$tmp/err.txt" | tr '\n' ' ')"
            status=1
        fi
        i=$((i + 1))
    done
    r=$((r + 1))
done
echo
printf '%-12s %12s %8s %12s %8s\n' variant decode ratio prefill ratio
i=1
while [ $i -le $n ]; do
    eval "label=\$label_$i"
    [ -s "$tmp/v$i" ] || { printf '%-12s %12s\n' "$label" "no runs"; i=$((i + 1)); continue; }
    python3 - "$tmp/v1" "$tmp/v$i" "$label" <<'PY'
import statistics, sys
def med(p):
    rows = [tuple(map(float, l.split())) for l in open(p) if l.strip()]
    return statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
try:
    b = med(sys.argv[1])
except (OSError, statistics.StatisticsError):
    b = None
v = med(sys.argv[2])
ratio = lambda x, y: "%.3f" % (x / y) if y else "-"
print("%-12s %12.1f %8s %12.1f %8s" % (sys.argv[3], v[0], ratio(v[0], b[0]) if b else "-",
                                        v[1], ratio(v[1], b[1]) if b else "-"))
PY
    i=$((i + 1))
done
exit $status
