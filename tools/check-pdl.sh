#!/bin/sh
# Fails when a HIP kernel does not begin with moert_pdl_wait(): with programmatic dependent
# launch a kernel may start before its predecessor finishes, so one that reads its inputs
# without waiting races (hip/hip_compat.h).  The one thing allowed before the wait is a
# pdl_prefetch_*() call, whose contract is to issue L2 prefetches of weights only, and
# then the wait must come next.  A kernel that starts with PDL_EARLY_READS; reads before its
# wait only what no kernel of the step writes (weights, step parameters, RoPE tables, KV rows
# of earlier positions); reviewers hold it to that, and to the one exception: the routed expert
# ids that k_smoe_down_early reads after a gate/up that released it late
# (moert_pdl_wait_release).  Run by `make hip` and `make hip-nvidia`.
set -eu
status=0
for f in "$@"; do
    awk -v file="$f" '
        /__global__/ { pending = 1; name = $0 }
        pending && /\{/ { want = 1; pending = 0; next }
        want && NF && $0 ~ /^[ \t]*PDL_EARLY_READS;/ { want = 0; next }
        want && NF && $0 ~ /^[ \t]*pdl_prefetch_[a-z_0-9]*(<[^>]*>)?\(/ { next }
        want && NF { if ($0 !~ /moert_pdl_wait(_release\([^)]*\))?(\(\))?;/) { print file ": kernel without moert_pdl_wait() first: " name; bad = 1 } want = 0 }
        END { exit bad }' "$f" || status=1
done
exit $status
