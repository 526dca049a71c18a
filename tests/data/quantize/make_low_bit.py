# Record llama-quantize's output for the issue-14 file types on tiny-natural: per run the exact
# command, and per tensor its type and the sha256 of its bytes (read with gguf-py).
# Usage: python3 make_low_bit.py tiny.F32.gguf ../imatrix/tiny-natural.imatrix.gguf > tiny-natural.low-bit.llama-quantize.json
import hashlib, json, os, subprocess, sys, tempfile
from gguf import GGUFReader

Q = os.environ.get('LLAMA_QUANTIZE', '/work/cache/llama_cpp_python-0.3.36/vendor/llama.cpp/build-avx2/bin/llama-quantize')
RUNS = [  # (key, type, use imatrix)
    ('Q2_K', 'Q2_K', False), ('Q2_K_S.imatrix', 'Q2_K_S', True), ('Q3_K_S', 'Q3_K_S', False),
    ('Q3_K_M', 'Q3_K_M', False), ('Q3_K_L', 'Q3_K_L', False), ('IQ4_NL', 'IQ4_NL', False),
    ('IQ4_XS', 'IQ4_XS', False), ('IQ4_XS.imatrix', 'IQ4_XS', True),
]
src, imatrix = sys.argv[1], sys.argv[2]
out = {'about': 'llama-quantize outputs on tiny-natural, see PROVENANCE.md',
       'input': os.path.basename(src),
       'input_sha256': hashlib.sha256(open(src, 'rb').read()).hexdigest(),
       'imatrix': os.path.basename(imatrix),
       'imatrix_sha256': hashlib.sha256(open(imatrix, 'rb').read()).hexdigest(),
       'runs': {}}
with tempfile.TemporaryDirectory() as d:
    for key, ty, im in RUNS:
        dst = os.path.join(d, key + '.gguf')
        cmd = [Q] + (['--imatrix', imatrix] if im else []) + [src, dst, ty, '2']
        subprocess.run(cmd, check=True, capture_output=True)
        r = GGUFReader(dst)
        tensors = {t.name: {'type': t.tensor_type.name,
                            'sha256': hashlib.sha256(t.data.tobytes()).hexdigest()} for t in r.tensors}
        shown = ['llama-quantize'] + (['--imatrix', os.path.basename(imatrix)] if im else []) + \
                [os.path.basename(src), 'out.gguf', ty, '2']
        out['runs'][key] = {'command': ' '.join(shown), 'tensors': tensors}
        os.remove(dst)
json.dump(out, sys.stdout, indent=1, sort_keys=True)
print()
