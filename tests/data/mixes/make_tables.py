# Make llama-quantize per-tensor type tables. Inputs: F32 GGUFs (SmolLM2 dequantized with gguf-py;
# tiny-natural written by longquant convert --type F32; ProLong-shaped tiny preset written by gguf-py).
import sys, json, subprocess, os
import numpy as np
from gguf import GGUFReader, GGUFWriter, GGMLQuantizationType
from gguf.quants import dequantize
Q = os.environ.get('LLAMA_QUANTIZE', '/work/cache/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin/llama-quantize')
TYPES = os.environ.get('TYPES', 'Q4_K_M Q5_K_M Q4_K_S Q5_K_S Q6_K Q8_0').split()
# With IMATRIX=FILE every run passes --imatrix FILE (needed for Q2_K_S; changes IQ4_NL/IQ4_XS mixes).
IMATRIX = os.environ.get('IMATRIX')

def copy_f32(src, dst, override_tensors=None):
    r = GGUFReader(src)
    w = GGUFWriter(dst, arch=r.fields['general.architecture'].contents())
    for k, f in r.fields.items():
        if k.startswith('GGUF.') or k in ('general.architecture',): continue
        if k == 'general.file_type': w.add_uint32(k, 0); continue
        vt = f.types[0]
        if vt.name == 'ARRAY':
            w.add_array(k, f.contents()) if f.types[1].name != 'STRING' else w.add_array(k, f.contents())
        else:
            w.add_key_value(k, f.contents(), vt)
    for t in r.tensors:
        a = dequantize(t.data, t.tensor_type).astype(np.float32).reshape([int(x) for x in reversed(t.shape)])
        w.add_tensor(t.name, a)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()

def table(f32, name):
    out = {}
    for ty in TYPES:
        dst = f'{name}.{ty}.gguf'
        subprocess.run([Q] + (['--imatrix', IMATRIX] if IMATRIX else []) + [f32, dst, ty, '2'],
                       check=True, capture_output=True)
        r = GGUFReader(dst)
        out[ty] = {t.name: t.tensor_type.name for t in r.tensors}
        os.remove(dst)
    return out

name, f32 = sys.argv[1], sys.argv[2]
# OUT names the JSON (default NAME.json) so new tables can sit beside the old ones.
OUT = os.environ.get('OUT', name + '.json')
if len(sys.argv) > 3 and sys.argv[3] == 'dequant':
    copy_f32(f32, name + '.F32.gguf'); f32 = name + '.F32.gguf'
json.dump(table(f32, name), open(OUT, 'w'), indent=1, sort_keys=True)
print('ok', name)
