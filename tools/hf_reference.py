#!/usr/bin/env python3
"""Generate moert's own parity fixtures with Hugging Face transformers (float64 forward).

Runs where torch + transformers are installed (e.g. the GPU test machine; CPU is enough).
For every spec below it writes, under OUT/<name>/:
  config.json             transformers-5 spelling (num_local_experts, rope_parameters)
  model.safetensors       seeded random weights with the hub's tensor names, in the spec's dtype
  reference.safetensors   per-stage tensors [tokens, dim] (float32 of the float64 forward):
                          embed, l{i}.attn_norm, l{i}.attn_out, l{i}.ffn_norm,
                          l{i}.router_logits, l{i}.moe_ffn_out, l{i}.output, final_norm, logits
  reference.json          prompt_ids, greedy_ids, greedy_top2_margins, versions

The weights are written by this script (not save_pretrained) and loaded back with
from_pretrained(dtype=float64), so the fixture is exactly what HF computed on, and HF's own
loader proves the names are the hub's (no missing or unexpected keys).

  python3 tools/hf_reference.py OUT [--check DIR ...]

--check DIR re-runs the capture on an existing reference directory (e.g. a copy of
../shared/reference/tiny-f32) and compares with its reference.safetensors: it proves the
hooks capture the same stages the shared references hold.
"""
import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import transformers
from transformers import AutoModelForCausalLM

SPECS = [
    # name, dtype, topology overrides, prompt length
    dict(name="gqa4-hd24", dtype="float32", prompt=12,
         cfg=dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                  num_key_value_heads=2, head_dim=24, num_local_experts=8, num_experts_per_tok=2,
                  moe_intermediate_size=32, intermediate_size=96, norm_topk_prob=True)),
    dict(name="top1-dense-bf16", dtype="bfloat16", prompt=10,
         cfg=dict(vocab_size=384, hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, num_local_experts=6, num_experts_per_tok=1,
                  moe_intermediate_size=24, intermediate_size=80, mlp_only_layers=[1],
                  norm_topk_prob=False)),
    dict(name="topk-all-tied-bf16", dtype="bfloat16", prompt=9,
         cfg=dict(vocab_size=320, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=32, num_local_experts=4, num_experts_per_tok=4,
                  moe_intermediate_size=16, intermediate_size=64, decoder_sparse_step=2,
                  tie_word_embeddings=True, norm_topk_prob=True, rope_theta=10000.0)),
    dict(name="long-prompt", dtype="float32", prompt=100,
         cfg=dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, head_dim=16, num_local_experts=16, num_experts_per_tok=4,
                  moe_intermediate_size=16, intermediate_size=64, norm_topk_prob=True)),
    dict(name="f16-mqa-odd", dtype="float16", prompt=11,
         cfg=dict(vocab_size=300, hidden_size=40, num_hidden_layers=2, num_attention_heads=6,
                  num_key_value_heads=1, head_dim=20, num_local_experts=5, num_experts_per_tok=3,
                  moe_intermediate_size=20, intermediate_size=60, norm_topk_prob=True)),
]

BASE = {
    "architectures": ["Qwen3MoeForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": None, "decoder_sparse_step": 1, "eos_token_id": None, "hidden_act": "silu",
    "initializer_range": 0.05, "max_position_embeddings": 4096, "mlp_only_layers": [],
    "model_type": "qwen3_moe", "output_router_logits": False, "pad_token_id": None,
    "rms_norm_eps": 1e-06, "router_aux_loss_coef": 0.001, "sliding_window": None,
    "tie_word_embeddings": False, "use_cache": True, "use_sliding_window": False,
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
N_GREEDY = 12


def sparse(cfg, i):
    return (i not in cfg["mlp_only_layers"] and cfg["num_local_experts"] > 0
            and (i + 1) % cfg["decoder_sparse_step"] == 0)


def make_weights(cfg, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    H, V, hd = cfg["hidden_size"], cfg["vocab_size"], cfg["head_dim"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    E, I, Id = cfg["num_local_experts"], cfg["moe_intermediate_size"], cfg["intermediate_size"]
    w = {}

    def lin(name, rows, cols):
        w[name] = torch.randn(rows, cols, generator=g, dtype=torch.float64) * 0.05

    def norm(name, n):
        w[name] = 1.0 + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)

    lin("model.embed_tokens.weight", V, H)
    if not cfg["tie_word_embeddings"]:
        lin("lm_head.weight", V, H)
    norm("model.norm.weight", H)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        norm(p + "input_layernorm.weight", H)
        norm(p + "post_attention_layernorm.weight", H)
        lin(p + "self_attn.q_proj.weight", nh * hd, H)
        lin(p + "self_attn.k_proj.weight", nkv * hd, H)
        lin(p + "self_attn.v_proj.weight", nkv * hd, H)
        lin(p + "self_attn.o_proj.weight", H, nh * hd)
        norm(p + "self_attn.q_norm.weight", hd)
        norm(p + "self_attn.k_norm.weight", hd)
        if sparse(cfg, i):
            lin(p + "mlp.gate.weight", E, H)
            for e in range(E):
                lin(p + f"mlp.experts.{e}.gate_proj.weight", I, H)
                lin(p + f"mlp.experts.{e}.up_proj.weight", I, H)
                lin(p + f"mlp.experts.{e}.down_proj.weight", H, I)
        else:
            lin(p + "mlp.gate_proj.weight", Id, H)
            lin(p + "mlp.up_proj.weight", Id, H)
            lin(p + "mlp.down_proj.weight", H, Id)
    return {k: v.to(dtype).contiguous() for k, v in sorted(w.items())}


def first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


def capture(model, ids):
    """Per-stage float64 tensors [tokens, dim] of one forward over ids."""
    m = model.model
    out, hooks = {}, []

    def keep(name):
        def hook(_mod, _inp, o):
            out[name] = first(o).detach()[0].clone()
        return hook

    hooks.append(m.embed_tokens.register_forward_hook(keep("embed")))
    for i, layer in enumerate(m.layers):
        hooks.append(layer.input_layernorm.register_forward_hook(keep(f"l{i}.attn_norm")))
        hooks.append(layer.self_attn.register_forward_hook(keep(f"l{i}.attn_out")))
        hooks.append(layer.post_attention_layernorm.register_forward_hook(keep(f"l{i}.ffn_norm")))
        hooks.append(layer.mlp.register_forward_hook(keep(f"l{i}.moe_ffn_out")))
        hooks.append(layer.register_forward_hook(keep(f"l{i}.output")))
    hooks.append(m.norm.register_forward_hook(keep("final_norm")))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    for h in hooks:
        h.remove()
    out["logits"] = logits.detach().clone()
    # Router logits by definition: the gate's linear map of the FFN-normed input.
    for i, layer in enumerate(m.layers):
        gate = getattr(layer.mlp, "gate", None)
        if gate is not None and hasattr(gate, "weight"):
            x = out[f"l{i}.ffn_norm"]
            out[f"l{i}.router_logits"] = F.linear(x, gate.weight.to(x.dtype))
    return out


def greedy(model, ids, n):
    ids, gen, margins = list(ids), [], []
    with torch.no_grad():
        for _ in range(n):
            lg = model(input_ids=torch.tensor([ids])).logits[0, -1]
            top = torch.topk(lg, 2)
            tok = int(top.indices[0])
            gen.append(tok)
            margins.append(float(top.values[0] - top.values[1]))
            ids.append(tok)
    return gen, margins


def load(dirname, dtype=torch.float64):
    """The HF model of a snapshot directory in `dtype` (float64 by default), eval mode;
    exits when HF reports missing, unexpected or mismatched weights."""
    # The grouped-mm experts kernel has no float64 path: ask for the eager per-expert loop.
    try:
        model, info = AutoModelForCausalLM.from_pretrained(dirname, dtype=dtype,
                                                           output_loading_info=True,
                                                           experts_implementation="eager")
    except (TypeError, ValueError):
        model, info = AutoModelForCausalLM.from_pretrained(dirname, dtype=dtype,
                                                           output_loading_info=True)
    for mod in model.modules():
        cfg = getattr(mod, "config", None)
        if cfg is not None and hasattr(cfg, "_experts_implementation"):
            cfg._experts_implementation = "eager"
    bad = {k: v for k, v in info.items() if v and k != "error_msgs"} if isinstance(info, dict) else {}
    if bad or (isinstance(info, dict) and info.get("error_msgs")):
        sys.exit(f"{dirname}: HF loading reported {info}")
    model.eval()
    return model


def generate(spec, outdir, seed):
    cfg = dict(BASE)
    cfg.update(spec["cfg"])
    cfg["dtype"] = spec["dtype"]
    cfg["transformers_version"] = transformers.__version__
    cfg["rope_parameters"] = {"rope_theta": cfg.pop("rope_theta", 1000000.0), "rope_type": "default"}
    d = os.path.join(outdir, spec["name"])
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    save_file(make_weights(cfg, DTYPES[spec["dtype"]], seed), os.path.join(d, "model.safetensors"),
              metadata={"format": "pt"})
    model = load(d)
    g = torch.Generator().manual_seed(seed + 1)
    prompt = torch.randint(0, cfg["vocab_size"], (spec["prompt"],), generator=g).tolist()
    ref = capture(model, prompt)
    gen, margins = greedy(model, prompt, N_GREEDY)
    save_file({k: v.float().contiguous() for k, v in sorted(ref.items())},
              os.path.join(d, "reference.safetensors"))
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump({"model": spec["name"],
                   "source": f"transformers {transformers.__version__} Qwen3MoeForCausalLM, float64 forward "
                             f"(tools/hf_reference.py, seed {seed})",
                   "torch": torch.__version__, "prompt_ids": prompt, "greedy_ids": gen,
                   "greedy_top2_margins": margins,
                   "tensors": {k: list(v.shape) for k, v in sorted(ref.items())}}, f, indent=1)
    print(f"{spec['name']}: {len(ref)} stages, prompt {len(prompt)}, greedy {gen}, "
          f"min margin {min(margins):.4f}")


def check(refdir):
    model = load(refdir)
    meta = json.load(open(os.path.join(refdir, "reference.json")))
    ref = load_file(os.path.join(refdir, "reference.safetensors"))
    got = capture(model, meta["prompt_ids"])
    worst = 0.0
    for k, v in ref.items():
        if k not in got:
            sys.exit(f"check {refdir}: stage {k} not captured")
        g = got[k].float()
        err = float((g - v).norm() / v.norm().clamp_min(1e-30))
        worst = max(worst, err)
        if err > 1e-5:
            sys.exit(f"check {refdir}: stage {k} rel err {err:.3e}")
    gen, _ = greedy(model, meta["prompt_ids"], len(meta["greedy_ids"]))
    if gen != meta["greedy_ids"]:
        sys.exit(f"check {refdir}: greedy {gen} != {meta['greedy_ids']}")
    print(f"check {refdir}: {len(ref)} stages match (worst rel err {worst:.2e}), greedy matches")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--check", action="append", default=[])
    ap.add_argument("--seed", type=int, default=20261122)
    a = ap.parse_args()
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    for c in a.check:
        check(c)
    for i, spec in enumerate(SPECS):
        generate(spec, a.out, a.seed + 17 * i)


if __name__ == "__main__":
    main()
