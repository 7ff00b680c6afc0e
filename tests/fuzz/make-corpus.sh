#!/bin/sh
# Rebuilds the fuzz harnesses' fixed data (tests/fuzz/data/) and seed corpora
# (tests/fuzz/corpus/<target>/) from the repository's own configs, fixtures and bad-input
# catalogues.  Run from the repository root after `make`; commit what changes.  Seeds are
# kept small (a few KB each): the fuzzer grows its own corpus under build/fuzz/.
set -eu
[ -x ./moert ] || { echo "make-corpus: build ./moert first (make)" >&2; exit 2; }
D=tests/fuzz/data
C=tests/fuzz/corpus
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
rm -rf "$C"
for t in st st_index config contract hf_config tok_json tok_encode tok_ids trace_validate trace_diff \
         replay_manifest cli_args gguf; do
    mkdir -p "$C/$t"
done

# Fixed data: a tiny model's traces (tensor and stats mode) and a plain reference file.
./moert run $D/tiny.yaml --tokens 1,2 -n 2 --trace $D/tiny.trace --trace-mode tensor \
    --trace-positions all >/dev/null 2>&1
./moert run $D/tiny.yaml --tokens 3,4,5 -n 2 --trace "$T/stats.trace" >/dev/null 2>&1
./moert synth $D/tiny.yaml --out "$T/model" >/dev/null 2>&1
python3 - "$D" "$C" "$T" <<'PY'
import json, os, struct, sys
D, C, T = sys.argv[1:4]

def read_st(p):
    b = open(p, 'rb').read()
    n = struct.unpack('<Q', b[:8])[0]
    return json.loads(b[8:8 + n]), b[8 + n:]

def write_st(p, tensors, meta=None):
    """tensors: list of (name, dtype, shape, bytes)"""
    h, at, data = {}, 0, b''
    if meta:
        h['__metadata__'] = meta
    for name, dt, shape, raw in tensors:
        h[name] = {'dtype': dt, 'shape': shape, 'data_offsets': [at, at + len(raw)]}
        at += len(raw)
        data += raw
    js = json.dumps(h, separators=(',', ':')).encode()
    js += b' ' * (-len(js) % 8)
    open(p, 'wb').write(struct.pack('<Q', len(js)) + js + data)

def raw(p, b):
    open(p, 'wb').write(b)

# A plain reference file: the trace's stage tensors without its metadata and ring records.
h, data = read_st(os.path.join(D, 'tiny.trace'))
ts = [(k, v['dtype'], v['shape'], data[v['data_offsets'][0]:v['data_offsets'][1]])
      for k, v in sorted(h.items()) if k != '__metadata__' and '@' not in k]
write_st(os.path.join(D, 'tiny-ref.safetensors'), ts)
manifest = json.loads(h['__metadata__']['manifest'])

# st: valid files (weights, reference, trace) and a catalogue of corrupt ones.
st = os.path.join(C, 'st')
raw(os.path.join(st, 'weights.safetensors'), open(os.path.join(T, 'model', 'model-00001-of-00001.safetensors'), 'rb').read())
raw(os.path.join(st, 'ref.safetensors'), open(os.path.join(D, 'tiny-ref.safetensors'), 'rb').read())
write_st(os.path.join(st, 'meta.safetensors'), [('a', 'F16', [2, 2], b'\0' * 8), ('z', 'U8', [0], b'')], {'format': 'pt'})
def hdr(text, data=b''):
    return struct.pack('<Q', len(text)) + text + data
for name, b in [('empty', b''), ('short', b'abc'), ('braces', hdr(b'{}')),
                ('hdrpast', struct.pack('<Q', 100) + b'{}'),
                ('overlap', hdr(b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}', b'\0' * 12)),
                ('gap', hdr(b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}', b'\0' * 12)),
                ('ovf', hdr(b'{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,0]}}')),
                ('quant', hdr(b'{"a":{"dtype":"Q8_0","shape":[32],"data_offsets":[0,34]}}', b'\0' * 34)),
                ('dims', hdr(b'{"a":{"dtype":"BF16","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,2]}}', b'\0\0')),
                ('badmeta', hdr(b'{"__metadata__":{"k":1}}'))]:
    raw(os.path.join(st, name + '.safetensors'), b)

# st_index: shards s1 {a, b} and s2 {c} exist next to the index (fuzz_st_index.c).
ix = os.path.join(C, 'st_index')
for name, j in [('ok', {'metadata': {'total_size': 21}, 'weight_map': {'a': 's1.safetensors', 'b': 's1.safetensors', 'c': 's2.safetensors'}}),
                ('missing-shard', {'weight_map': {'a': 's1.safetensors', 'x': 'nope.safetensors'}}),
                ('unlisted', {'weight_map': {'a': 's1.safetensors', 'c': 's2.safetensors'}}),
                ('wrong-shard', {'weight_map': {'a': 's1.safetensors', 'b': 's1.safetensors', 'c': 's1.safetensors'}}),
                ('escape', {'weight_map': {'a': '../s1.safetensors'}}),
                ('empty', {'weight_map': {}}), ('not-object', [1, 2])]:
    raw(os.path.join(ix, name + '.json'), json.dumps(j).encode())
raw(os.path.join(ix, 'syntax.json'), b'{"weight_map": {"a": }')

# trace_validate / trace_diff: both traces and the reference file.
for t in ('trace_validate', 'trace_diff'):
    raw(os.path.join(C, t, 'tensor.trace'), open(os.path.join(D, 'tiny.trace'), 'rb').read())
    raw(os.path.join(C, t, 'stats.trace'), open(os.path.join(T, 'stats.trace'), 'rb').read())
raw(os.path.join(C, 'trace_diff', 'ref.safetensors'), open(os.path.join(D, 'tiny-ref.safetensors'), 'rb').read())

# replay_manifest: the tiny trace's manifest and single-field edits of it (the bad-manifest
# catalogue of tests/test_trace.c, on this trace).
rm = os.path.join(C, 'replay_manifest')
def edited(path, value):
    m = json.loads(json.dumps(manifest))
    o, keys = m, path.split('/')
    for k in keys[:-1]:
        o = o[int(k)] if isinstance(o, list) else o[k]
    k = keys[-1]
    if isinstance(o, list):
        o[int(k)] = value
    else:
        o[k] = value
    return m
raw(os.path.join(rm, 'ok.json'), json.dumps(manifest, sort_keys=True, separators=(',', ':')).encode())
for i, (path, value) in enumerate([('threads', 100000), ('rings/1/layer', 100000), ('rings/0/width', 1 << 40),
                                   ('rings/0/records', 99), ('prompt_ids/0', 1 << 32), ('sampling/top_k', 200000),
                                   ('trace/layers', [0, 0]), ('trace/stages/0', 'attention'), ('backend', 'tpu'),
                                   ('weights/source', 'path'), ('max_seq_len', 0),
                                   ('topology/mlp_only_layers', [4294967296])]):
    raw(os.path.join(rm, 'edit%02d.json' % i), json.dumps(edited(path, value), sort_keys=True, separators=(',', ':')).encode())
PY

# config: the shipped configs, the fuzz model, configs naming the scratch directory's files
# (fuzz_config.c writes tokenizer.json, contract.yaml, model.safetensors, config.json), and a
# sample of the bad-config catalogue.
cp configs/*.yaml $D/tiny.yaml $C/config/
cat > $C/config/files.yaml <<'Y'
model: {hf_config: config.json}
weights: model.safetensors
tokenizer: tokenizer.json
contract: contract.yaml
runtime: {max_seq_len: 64, prefill_chunk: 16, threads: 2, backend: cpu}
sampling: {temperature: 0.7, top_k: 50, top_p: 0.9, seed: 11}
trace: {enabled: true, out: x.trace, mode: tensor, positions: all, stages: [embed, moe_router, logits], layers: [0, 3], capacity: 8, on_full: stop}
Y
for f in 01 02 05 09 12 13 15 18 21 33 34 35 44 48 49 55 59 63 72 75 77 78; do
    cp tests/bad_configs/$f-*.yaml $C/config/
done
# contract: the shipped contract and a few broken ones
cp contracts/qwen3moe-trace-v1.yaml $C/contract/
printf 'contract: t\nversion: 1\ntensors:\n  moe_router.experts: {shape: [tokens, num_experts_per_tok], dtype: i32, rules: [{index_range: {limit: num_experts, when: norm_topk_prob}}, distinct]}\n  qkv: {shape: [tokens, qkv_dim], dtype: f32, rules: [finite, {sum_to_one: {tolerance: 0.5}}]}\n' > $C/contract/rules.yaml
printf 'contract: t\nversion: 1\ntensors:\n  embed: {shape: [tokens, hiden_size], dtype: f32}\n' > $C/contract/bad-dim.yaml
printf 'contract: t\nversion: 1\ntensors:\n  embed: {shape: [[[[[[[[tokens]]]]]]]], dtype: f32}\n' > $C/contract/nested.yaml
printf 'contract: &a t\nversion: *a\ntensors: {embed.x: {shape: [1, 2, 3, 4], dtype: i32, rules: [nonnegative]}}\n' > $C/contract/alias.yaml
# hf_config: fixture config.json files and the JSON bad-config catalogue
for d in tests/fixtures/qwen3-30b-a3b-hub tests/fixtures/qwen3-30b-a3b-t5 tests/fixtures/hf/*; do
    cp $d/config.json $C/hf_config/$(basename $d).json
done
cp tests/bad_configs/json/*.json $C/hf_config/
# tok_json: the hand-built tokenizer of tests/test_tok.c (extracted from its C string)
sed -n '/^static const char MINI_JSON\[\] =/,/;$/p' tests/test_tok.c | sed '1d' |
    sed -e 's/^ *"//' -e 's/\\n"[;]*$//' -e 's/"[;]*$//' -e 's/\\"/"/g' -e 's/\\\\/\\/g' > $C/tok_json/mini.json
sed 's/"ignore_merges": false/"ignore_merges": true/; s/{"type": "NFC"}/null/' $C/tok_json/mini.json > $C/tok_json/mini-ignore-merges.json
sed 's/{"id": 100, //' $C/tok_json/mini.json > $C/tok_json/no-id.json
sed 's/"Regex": " ?\[a-z\]+|/"Regex": "(?:a|aa)+$| ?[a-z]+|/' $C/tok_json/mini.json > $C/tok_json/backtrack.json
# tok_encode: a few texts (chat template, Unicode, invalid UTF-8)
printf 'Hello, world!' > $C/tok_encode/hello.txt
printf '<|im_start|>user\nWhat is MoE?<|im_end|>\n<|im_start|>assistant\n' > $C/tok_encode/chat.txt
printf 'caf\303\251 e\314\201 \342\202\254 \360\237\230\200  \t\n 123 4567 don'"'"'t' > $C/tok_encode/unicode.txt
printf 'ab\377cd\300\200' > $C/tok_encode/bad-utf8.txt
# tok_ids: detokenize inputs
printf '[9707, 11, 1879, 0, 151645]' > $C/tok_ids/json.txt
printf ' 9707,11 1879\n0\n' > $C/tok_ids/list.txt
printf '1,,2' > $C/tok_ids/empty-field.txt
printf '1\0002' > $C/tok_ids/nul.txt
printf '[151668, 151669, -1]' > $C/tok_ids/range.txt
printf '[33, 240, 159]' > $C/tok_ids/split-utf8.txt
# cli_args: newline-separated values for --threads, --prefill-chunk, --max-seq-len, --seed,
# --temp, --top-k, --top-p (fuzz_cli_args.c)
printf '2\n4\n32\n7\n0.7\n5\n0.9' > $C/cli_args/ok.txt
printf '0\n0\n0\n-1\nnan\n-1\n0' > $C/cli_args/zeros.txt
printf '1025\n1048577\n16777217\n9223372036854775808\n1e400\n17\n1.5' > $C/cli_args/over.txt
printf ' 4\n+4\n0x10\n1.5\n0x1p3\n4k\n.5' > $C/cli_args/forms.txt
printf '1,,2\n,1\n1,\n2147483648\n1 , 2' > $C/cli_args/tokens.txt
echo "make-corpus: $(find $C -type f | wc -l) seeds, $(du -sk $C | cut -f1) KB"

# GGUF: moert's own files (f32, and the 32-block types on a 32-wide model) and a
# tokenizer-only file with llama.cpp's tokenizer keys.
./moert synth $D/tiny.yaml --format gguf --dtype f32 --out "$C/gguf/tiny-f32.gguf" >/dev/null 2>&1
for q in q8_0 q4_0 q5_0; do
    ./moert synth $D/tiny32.yaml --format gguf --dtype $q --out "$C/gguf/tiny32-$q.gguf" >/dev/null 2>&1
done
python3 - "$C/gguf/tokenizer.gguf" <<'PY'
import struct, sys
def s(x):
    b = x.encode()
    return struct.pack('<Q', len(b)) + b
kv = [('general.architecture', 8, s('qwen3moe')), ('tokenizer.ggml.model', 8, s('gpt2')),
      ('tokenizer.ggml.pre', 8, s('qwen2'))]
toks = ['a', 'b', 'ab', '\u0120', '\u0120a', '<|im_end|>', '[PAD6]']
kv.append(('tokenizer.ggml.tokens', 9, struct.pack('<IQ', 8, len(toks)) + b''.join(s(t) for t in toks)))
kv.append(('tokenizer.ggml.token_type', 9, struct.pack('<IQ', 5, 7) + struct.pack('<7i', 1, 1, 1, 1, 1, 3, 5)))
merges = ['a b', '\u0120 a']
kv.append(('tokenizer.ggml.merges', 9, struct.pack('<IQ', 8, len(merges)) + b''.join(s(m) for m in merges)))
kv.append(('tokenizer.ggml.eos_token_id', 4, struct.pack('<I', 5)))
out = b'GGUF' + struct.pack('<IQQ', 3, 0, len(kv))
for k, t, v in kv:
    out += s(k) + struct.pack('<I', t) + v
open(sys.argv[1], 'wb').write(out)
PY
