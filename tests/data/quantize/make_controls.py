# Record llama-quantize's output for its per-tensor and metadata controls on tiny-natural: per run
# the exact command and, per output file, its metadata (key, type, value; arrays by type and
# length, strings over 256 bytes by sha256) and per tensor its type, byte count and sha256.
# Usage (see PROVENANCE.md):
#   python3 make_controls.py tiny.F32.gguf tiny.F32-00001-of-0000N.gguf imatrix.gguf > tiny-natural.controls.llama-quantize.json
import glob, hashlib, json, os, re, subprocess, sys, tempfile
import numpy as np
from gguf import GGUFReader, GGUFWriter, GGUFValueType

Q = os.environ.get('LLAMA_QUANTIZE', '/work/cache/llama_cpp_python-0.3.36/vendor/llama.cpp/build-avx2/bin/llama-quantize')
TT = ['--tensor-type', 'attn_v=q8_0', '--tensor-type', 'attn=q5_0',
      '--tensor-type', 'BLK\\.[0-1]\\.FFN_DOWN=Q4_0', '--tensor-type', 'ffn_up=iq4_nl']
RUNS = [  # (key, input, options, type)
    ('tensor_type', 'tied', TT, 'Q4_K_M'),
    ('tensor_type_f16', 'tied', ['--tensor-type', 'attn=q8_0'], 'F16'),
    ('output_and_token_embd_untied', 'untied',
     ['--output-tensor-type', 'q8_0', '--token-embedding-type', 'q4_k'], 'Q4_K_M'),
    ('output_tied', 'tied', ['--output-tensor-type', 'q5_0'], 'Q3_K_M'),
    ('token_embd_tied', 'tied', ['--token-embedding-type', 'q8_0'], 'Q4_K_S'),
    ('leave_output_untied', 'untied', ['--leave-output-tensor'], 'Q4_K_M'),
    ('override_kv', 'tied',
     ['--override-kv', 'llama.context_length=int:65536', '--override-kv', 'general.name=str:renamed model',
      '--override-kv', 'llama.rope.freq_base=float:500000.5', '--override-kv', 'tokenizer.ggml.add_bos_token=bool:false',
      '--override-kv', 'general.extra=int:-7'], 'Q8_0'),
    ('include_weights', 'tied', ['--imatrix', 'IMATRIX', '--include-weights', 'attn_v', '--include-weights', 'ffn_down'], 'IQ4_XS'),
    ('exclude_weights', 'tied', ['--imatrix', 'IMATRIX', '--exclude-weights', 'ffn'], 'Q4_K_M'),
    ('include_weights_none', 'tied', ['--imatrix', 'IMATRIX', '--include-weights', 'no_such_tensor'], 'Q4_0'),
    ('keep_split', 'split', ['--keep-split'], 'Q4_K_M'),
    ('prune_layers', 'tied', ['--prune-layers', '15,1,5'], 'Q4_K_M'),
    ('prune_layers_imatrix', 'tied', ['--imatrix', 'IMATRIX', '--prune-layers', '0,3'], 'IQ4_XS'),
]

def sha(b):
    return hashlib.sha256(b).hexdigest()

def value(f):
    t = f.types[0]
    if t == GGUFValueType.ARRAY:
        return ['ARRAY', f.types[1].name if len(f.types) > 1 else 'NONE', len(f.data)]
    v = f.contents()
    if t == GGUFValueType.STRING and len(v.encode()) > 256:
        return [t.name, 'sha256:' + sha(v.encode())]
    if t in (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64):
        v = float(v)
    return [t.name, v]

def describe(path):
    r = GGUFReader(path)
    md = [[k] + value(f) for k, f in r.fields.items() if not k.startswith('GGUF.')]
    tensors = {t.name: {'type': t.tensor_type.name, 'n_bytes': int(t.n_bytes),
                        'sha256': sha(t.data.tobytes())} for t in r.tensors}
    return {'file': os.path.basename(path), 'metadata': md, 'tensors': tensors}

def untie(src, dst):
    # tiny-natural has tied embeddings; an output.weight equal to token_embd.weight gives the
    # output controls something to act on.
    r = GGUFReader(src)
    w = GGUFWriter(dst, arch=r.fields['general.architecture'].contents())
    for k, f in r.fields.items():
        if k.startswith('GGUF.') or k == 'general.architecture':
            continue
        t = f.types[0]
        if t == GGUFValueType.ARRAY:
            w.add_key_value(k, f.contents(), t, sub_type=f.types[1])
        else:
            w.add_key_value(k, f.contents(), t)
    emb = None
    for t in r.tensors:
        a = np.array(t.data)
        w.add_tensor(t.name, a)
        if t.name == 'token_embd.weight':
            emb = a
    w.add_tensor('output.weight', emb.copy())
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()

tied, split_first, imatrix = sys.argv[1], sys.argv[2], sys.argv[3]
split_parts = sorted(glob.glob(re.sub(r'-00001-of-(\d+)\.gguf$', r'-*-of-\1.gguf', split_first)))
out = {'about': 'llama-quantize controls on tiny-natural, see PROVENANCE.md',
       'input_sha256': sha(open(tied, 'rb').read()),
       'split_input': [{'file': os.path.basename(p), 'sha256': sha(open(p, 'rb').read())} for p in split_parts],
       'imatrix_sha256': sha(open(imatrix, 'rb').read()),
       'runs': {}}
with tempfile.TemporaryDirectory() as d:
    untied = os.path.join(d, 'tiny-untied.F32.gguf')
    untie(tied, untied)
    out['untied_input_tensors'] = describe(untied)['tensors']
    inputs = {'tied': tied, 'untied': untied, 'split': split_first}
    shown_inputs = {'tied': 'tiny.F32.gguf', 'untied': 'tiny-untied.F32.gguf', 'split': os.path.basename(split_first)}
    for key, inp, opts, ty in RUNS:
        run_dir = os.path.join(d, key)
        os.mkdir(run_dir)
        dst = os.path.join(run_dir, 'out.gguf')
        args = [imatrix if a == 'IMATRIX' else a for a in opts]
        subprocess.run([Q] + args + [inputs[inp], dst, ty, '2'], check=True, capture_output=True)
        files = sorted(glob.glob(os.path.join(run_dir, '*.gguf')))
        shown = ['llama-quantize'] + [os.path.basename(imatrix) if a == 'IMATRIX' else a for a in opts] + \
                [shown_inputs[inp], 'out.gguf', ty, '2']
        out['runs'][key] = {'command': ' '.join(shown), 'input': inp, 'type': ty,
                            'args': [os.path.basename(imatrix) if a == 'IMATRIX' else a for a in opts],
                            'outputs': [describe(f) for f in files]}
    # --dry-run: nothing written; per tensor the type it reports ("(type)" after a conversion,
    # else the input's type) and the total it prints.
    dry_dir = os.path.join(d, 'dry')
    os.mkdir(dry_dir)
    p = subprocess.run([Q, '--dry-run'] + TT + [tied, 'Q4_K_M', '2'], check=True, capture_output=True,
                       text=True, cwd=dry_dir)
    log = p.stdout + p.stderr
    assert os.listdir(dry_dir) == [], 'llama-quantize --dry-run wrote a file'
    types = {}
    for m in re.finditer(r'\]\s+(\S+)\s+- \[[^\]]*\], type =\s+(\S+), size =[^\n]*?(?:\((\S+)\))?\n', log):
        types[m.group(1)] = (m.group(3) or m.group(2)).upper()
    total = re.search(r'quant size\s*=\s*([0-9.]+) MiB', log).group(1)
    out['runs']['dry_run'] = {'command': 'llama-quantize --dry-run ' + ' '.join(TT) + ' tiny.F32.gguf Q4_K_M 2',
                              'input': 'tied', 'type': 'Q4_K_M', 'args': TT, 'types': types,
                              'quant_size_mib': total}
json.dump(out, sys.stdout, indent=1, sort_keys=True)
print()
