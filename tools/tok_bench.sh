#!/bin/sh
# Tokenizer benchmark: load time and encode speed of `moert tokenize --bench` on ~5 MB of
# English prose (a paragraph written for this purpose, repeated with numbered variations so
# that not every piece is a cache hit).  Usage: tools/tok_bench.sh [TOKENIZER_JSON] [MB]
set -eu
TOK=${1:-build/tokenizer/qwen3/tokenizer.json}
MB=${2:-5}
TXT=build/tok-bench.txt
mkdir -p build
awk -v mb="$MB" 'BEGIN {
  p = "The lighthouse keeper climbed the spiral stairs every evening at dusk, counting the " \
      "steps as his father had taught him. There were one hundred and twelve of them, worn " \
      "smooth in the middle by a century of boots. At the top he trimmed the wick, polished " \
      "the great lens until it shone like still water, and wrote the weather in a ledger: " \
      "wind from the north-west, sea moderate, visibility good. Ships he never saw relied on " \
      "that light; he liked to think of their captains, tired and grateful, turning the wheel " \
      "a few degrees when the beam swept across the dark. In winter the storms came without " \
      "warning, and the whole tower hummed like a struck bell. He didn'\''t mind. \"A light that " \
      "only works in fair weather,\" he would say, \"isn'\''t much of a light at all.\"\n";
  n = 0; i = 0
  while (n < mb * 1000000) { line = "[" i "] " p; printf "%s", line; n += length(line); i++ }
}' > "$TXT"
ls -l "$TXT" >&2
./moert tokenize "$TOK" --bench --repeat "${REPEAT:-3}" < "$TXT"
