# Golden outputs of llama.cpp's llama-quantize --allow-requantize on the SmolLM2 Q4_1 fixture:
# per tensor, its type and the sha256 of its bytes. tests/quantize_smollm2.rs checks that
# `longquant quantize --allow-requantize` writes the same types and the same bytes.
# Usage: python3 make_requant.py SmolLM2-135M-Instruct.Q4_1.gguf
import sys, json, subprocess, os, hashlib
import numpy as np
from gguf import GGUFReader
Q = '/work/cache/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin/llama-quantize'
out = {}
for ty in ['Q4_K_M', 'Q8_0', 'Q6_K']:
    dst = f'requant.{ty}.gguf'
    subprocess.run([Q, '--allow-requantize', sys.argv[1], dst, ty, '2'], check=True, capture_output=True)
    r = GGUFReader(dst)
    out[ty] = {t.name: [t.tensor_type.name, hashlib.sha256(np.asarray(t.data).view(np.uint8).tobytes()).hexdigest()]
               for t in r.tensors}
    os.remove(dst)
json.dump(out, open('smollm2-requant.json', 'w'), indent=1, sort_keys=True)
print('ok')
