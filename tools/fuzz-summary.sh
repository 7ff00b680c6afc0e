#!/bin/sh
# One line from a libFuzzer log: executions, speed, coverage, corpus (and a crash if any).
log=$1
done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1)
[ -n "$done_line" ] || done_line=$(grep -E '^#[0-9]+[[:space:]]+(INITED|pulse|NEW|REDUCE)' "$log" | tail -1)
execs=$(grep -E '^stat::number_of_executed_units:' "$log" | tail -1 | awk '{print $2}')
speed=$(grep -E '^stat::average_exec_per_sec:' "$log" | tail -1 | awk '{print $2}')
cov=$(echo "$done_line" | sed -n 's/.*cov: \([0-9]*\).*/\1/p')
ft=$(echo "$done_line" | sed -n 's/.*ft: \([0-9]*\).*/\1/p')
corp=$(echo "$done_line" | sed -n 's/.*corp: \([0-9]*\/[0-9]*[a-zA-Z]*\).*/\1/p')
crash=$(grep -E '^(==[0-9]+==ERROR|SUMMARY: |fuzz: invariant)' "$log" | head -1)
printf 'execs %s (%s/s)  cov %s  ft %s  corpus %s%s\n' "${execs:-?}" "${speed:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" \
    "${crash:+  CRASH: $crash}"
