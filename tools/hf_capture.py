#!/usr/bin/env python3
"""Capture every stage of Hugging Face transformers' forward of any Qwen3-MoE snapshot
under moert's stage names, so `moert diff TRACE ref.safetensors` compares your own model's
run with HF's.

  python3 tools/hf_capture.py MODEL_DIR (--tokens 1,2,3 | --prompt TEXT) --out ref.safetensors
                              [--dtype float32|float64]

MODEL_DIR is a HF snapshot (config.json, safetensors, and tokenizer files for --prompt).
ref.safetensors holds, as float32 [tokens, width]: embed, l{i}.attn_norm, l{i}.attn_out,
l{i}.ffn_norm, l{i}.router_logits, l{i}.moe_router (top-k routing weights) with
l{i}.moe_router.experts (int32 expert ids), l{i}.moe_ffn_out, l{i}.output, final_norm and
logits: the names and shapes of a `moert run --tokens IDS -n 0 --trace T --trace-mode tensor
--trace-positions all` trace.  Its metadata carries prompt_ids (a JSON array), the model
directory, dtype and versions, so `diff` can check that both sides ran the same prompt.

The forward pass and its hooks are tools/hf_reference.py's (the built-in fixtures' own
generator), shared rather than copied.  Runs where torch and transformers are installed.
"""
import argparse
import json
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_reference  # noqa: E402  (capture, load)

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def routing(router_logits, k, normalize):
    """moe_router as moert records it: softmax over the experts, the k largest in
    descending order, renormalised to sum 1 when norm_topk_prob (HF's Qwen3MoE router)."""
    probs = torch.softmax(router_logits, dim=-1)
    w, ids = torch.topk(probs, k, dim=-1)
    if normalize:
        w = w / w.sum(dim=-1, keepdim=True)
    return w, ids.to(torch.int32)


def prompt_ids(args):
    if args.tokens is not None:
        try:
            ids = [int(t) for t in args.tokens.replace(",", " ").split()]
        except ValueError:
            sys.exit(f"--tokens: expected comma-separated token ids, got {args.tokens!r}")
        if not ids:
            sys.exit("--tokens: no ids given")
        return ids
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    ids = tok(args.prompt, add_special_tokens=False)["input_ids"]
    if not ids:
        sys.exit("--prompt: the text encodes to no tokens")
    return ids


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--tokens")
    src.add_argument("--prompt")
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float64")
    a = ap.parse_args()
    if not os.path.isfile(os.path.join(a.model_dir, "config.json")):
        sys.exit(f"{a.model_dir}: no config.json (expected a Hugging Face model directory)")
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    model = hf_reference.load(a.model_dir, DTYPES[a.dtype])
    cfg = model.config
    ids = prompt_ids(a)
    bad = [t for t in ids if not 0 <= t < cfg.vocab_size]
    if bad:
        sys.exit(f"token id {bad[0]} is outside [0, {cfg.vocab_size})")
    out = hf_reference.capture(model, ids)
    k = cfg.num_experts_per_tok
    for i in range(cfg.num_hidden_layers):
        logits = out.get(f"l{i}.router_logits")
        if logits is not None:
            w, e = routing(logits, k, bool(getattr(cfg, "norm_topk_prob", False)))
            out[f"l{i}.moe_router"] = w
            out[f"l{i}.moe_router.experts"] = e
    tensors = {n: (v if v.dtype == torch.int32 else v.float()).contiguous() for n, v in sorted(out.items())}
    import transformers
    meta = {"format": "hf-reference", "prompt_ids": json.dumps(ids), "model_dir": os.path.abspath(a.model_dir),
            "dtype": a.dtype, "source": f"transformers {transformers.__version__} {type(model).__name__}, "
                                        f"{a.dtype} forward (tools/hf_capture.py)",
            "torch": torch.__version__}
    tmp = a.out + ".tmp"
    save_file(tensors, tmp, metadata=meta)
    os.replace(tmp, a.out)  # never a half-written reference
    print(f"{a.out}: {len(tensors)} tensors, {len(ids)} tokens, {a.dtype}")


if __name__ == "__main__":
    main()
