#!/bin/sh
# tools/hf_capture_check.sh: proves tools/hf_capture.py on one of moert's own HF fixtures,
# where torch + transformers are installed (the GPU machine; CPU is enough).
#
#   MOERT=./moert OUT=dir sh tools/hf_capture_check.sh [FIXTURE_DIR]
#
# 1. a float64 capture matches the fixture's reference.safetensors (written by
#    tools/hf_reference.py: the same HF forward) stage for stage, within 1e-6;
# 2. `moert diff` of moert's tensor trace against the capture: every stage within 1e-5
#    relative error and every top-k expert set the same (float64), within 1e-4 (float32);
# 3. --prompt: a word-level tokenizer saved into a copy of the fixture; the capture's
#    prompt_ids metadata is that tokenizer's encoding, its tensors those of --tokens IDS;
# 4. bad input (an id past the vocabulary, no model directory) exits non-zero, no file.
# Exit 0 when all hold.
set -eu
MOERT=${MOERT:-./moert}
OUT=${OUT:-build/hf-capture-check}
FX=${1:-tests/fixtures/hf/gqa4-hd24}
mkdir -p "$OUT"
ids=$(python3 -c "import json,sys; print(','.join(map(str, json.load(open(sys.argv[1]))['prompt_ids'])))" "$FX/reference.json")

python3 tools/hf_capture.py "$FX" --tokens "$ids" --out "$OUT/cap64.safetensors" --dtype float64
python3 tools/hf_capture.py "$FX" --tokens "$ids" --out "$OUT/cap32.safetensors" --dtype float32
"$MOERT" run "$FX" --tokens "$ids" -n 0 --trace "$OUT/moert.trace" --trace-mode tensor --trace-positions all
for d in 64 32; do
  rc=0; "$MOERT" diff "$OUT/moert.trace" "$OUT/cap$d.safetensors" --json > "$OUT/diff$d.json" || rc=$?
  echo "moert diff vs float$d capture: exit $rc"
  "$MOERT" diff "$OUT/moert.trace" "$OUT/cap$d.safetensors" || true
done

python3 - "$FX" "$OUT" "$ids" <<'PY'
import json, os, shutil, subprocess, sys
import torch
from safetensors import safe_open
from safetensors.torch import load_file
fx, out, ids = sys.argv[1], sys.argv[2], [int(t) for t in sys.argv[3].split(",")]
fail = []
def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        fail.append(what)

ref = load_file(os.path.join(fx, "reference.safetensors"))
cap = load_file(os.path.join(out, "cap64.safetensors"))
for k, v in sorted(ref.items()):
    c = cap.get(k)
    e = float((c.double() - v.double()).norm() / v.double().norm().clamp_min(1e-30)) if c is not None and c.shape == v.shape else 1.0
    check(e <= 1e-6, f"1. float64 capture {k} matches the fixture's reference (rel err {e:.1e})")
with safe_open(os.path.join(out, "cap64.safetensors"), "pt") as f:
    check(json.loads(f.metadata()["prompt_ids"]) == ids, "1. prompt_ids metadata is the prompt")
routers = [k for k in cap if k.endswith(".moe_router")]
check(len(routers) > 0 and all(k + ".experts" in cap for k in routers), "1. moe_router weights and expert ids captured")

for d, tol in ((64, 1e-5), (32, 1e-4)):
    j = json.load(open(os.path.join(out, f"diff{d}.json")))
    st = j["stages"]
    names = {s["name"] for s in st}
    check(len(st) >= 9 and all(k in names for k in ref), f"2. diff float{d}: {len(st)} stages in common, every reference stage")
    for s in st:
        if "rel_err" in s:
            check(s["rel_err"] <= tol, f"2. diff float{d} {s['name']}: rel_err {s['rel_err']:.3e} <= {tol}")
        if "topk_agreement" in s:
            check(s["topk_agreement"] == 1.0, f"2. diff float{d} {s['name']}: top-k agreement {s['topk_agreement']}")

# 3. --prompt through a tokenizer of the model's own directory
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
words = ["the", "sky", "is", "blue", "why", "[UNK]"]
tk = Tokenizer(models.WordLevel({w: 3 + 7 * i for i, w in enumerate(words)}, unk_token="[UNK]"))
tk.pre_tokenizer = pre_tokenizers.Whitespace()
d2 = os.path.join(out, "with-tokenizer")
shutil.rmtree(d2, ignore_errors=True)
shutil.copytree(fx, d2)
PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]").save_pretrained(d2)
text = "why is the sky blue"
want = tk.encode(text).ids
subprocess.run([sys.executable, "tools/hf_capture.py", d2, "--prompt", text, "--out", os.path.join(out, "capp.safetensors")], check=True)
subprocess.run([sys.executable, "tools/hf_capture.py", fx, "--tokens", ",".join(map(str, want)), "--out", os.path.join(out, "capt.safetensors")], check=True)
with safe_open(os.path.join(out, "capp.safetensors"), "pt") as f:
    check(json.loads(f.metadata()["prompt_ids"]) == want, f"3. --prompt: prompt_ids {want}")
a, b = load_file(os.path.join(out, "capp.safetensors")), load_file(os.path.join(out, "capt.safetensors"))
check(a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "3. --prompt capture equals --tokens of the same ids")

# 4. bad input
bad = os.path.join(out, "bad.safetensors")
r = subprocess.run([sys.executable, "tools/hf_capture.py", fx, "--tokens", "1,999999", "--out", bad], capture_output=True, text=True)
check(r.returncode != 0 and "outside" in r.stderr and not os.path.exists(bad), "4. an id past the vocabulary: refused, no file")
r = subprocess.run([sys.executable, "tools/hf_capture.py", "/nonexistent", "--tokens", "1", "--out", bad], capture_output=True, text=True)
check(r.returncode != 0 and "config.json" in r.stderr, "4. no model directory: refused")
print(f"\n{'PASS' if not fail else 'FAIL'}: {len(fail)} failed")
sys.exit(1 if fail else 0)
PY
