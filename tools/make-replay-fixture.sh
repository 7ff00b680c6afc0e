#!/bin/sh
# Records tests/fixtures/replay/default.trace, the trace `make test` replays bit for bit.
# Run from the repository root after `make`.  Sampling is on (temperature 0.7, seed 11) so
# the replay also proves the sampler reproduces.
set -eu
./moert run tests/fixtures/replay/record.yaml --tokens 9707,11,1879,0,576,374 -n 6 \
    --trace tests/fixtures/replay/default.trace
./moert validate contracts/qwen3moe-trace-v1.yaml tests/fixtures/replay/default.trace
