"""gguf-py's reading of an imatrix GGUF, as JSON for tests/imatrix_formats.rs.

Per entry (tensor name without the .in_sum2/.counts suffix): the in_sum2 shape (gguf-py order), the
counts, the f64 sum of in_sum2, and the bit patterns of a few in_sum2 values; plus the derived
importance weights (in_sum2 / count per matrix, 1 where the count is 0, as llama-quantize computes
them): their f64 sum and a few bit patterns. Metadata: imatrix.datasets, chunk_count, chunk_size.
"""
import json
import sys

import numpy as np
from gguf import GGUFReader

r = GGUFReader(sys.argv[1])
md = {}
for f in r.fields.values():
    if f.name == "imatrix.datasets":
        md["datasets"] = [bytes(f.parts[i]).decode() for i in f.data]
    elif f.name in ("imatrix.chunk_count", "imatrix.chunk_size"):
        md[f.name.split(".")[1]] = int(f.parts[f.data[0]][0])
    elif f.name == "general.type":
        md["general_type"] = bytes(f.parts[f.data[0]]).decode()
t = {x.name: x for x in r.tensors}
entries = {}
for name in sorted(n[: -len(".in_sum2")] for n in t if n.endswith(".in_sum2")):
    s = np.asarray(t[name + ".in_sum2"].data, dtype=np.float32)
    c = np.asarray(t[name + ".counts"].data, dtype=np.float32).reshape(-1)
    nmat = c.size
    s2 = s.reshape(nmat, -1)
    w = np.where(c[:, None] > 0, s2 / np.where(c[:, None] > 0, c[:, None], 1), 1.0).astype(np.float32).reshape(-1)
    flat = s.reshape(-1)
    idx = sorted({0, 1, flat.size // 2, flat.size - 1})
    entries[name] = {
        "shape": [int(x) for x in t[name + ".in_sum2"].shape],
        "counts": [float(x) for x in c],
        "sum": float(flat.astype(np.float64).sum()),
        "samples": {str(i): int(flat[i:i + 1].view(np.uint32)[0]) for i in idx},
        "weights_sum": float(w.astype(np.float64).sum()),
        "weights_samples": {str(i): int(w[i:i + 1].view(np.uint32)[0]) for i in idx},
    }
print(json.dumps({"file": sys.argv[1].split("/")[-1], "metadata": md, "entries": entries}, indent=1))
