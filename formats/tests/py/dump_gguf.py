"""Dump a GGUF file as gguf-py's GGUFReader sees it, as JSON on stdout.

Used by formats/tests/gguf_py_interop.rs to compare our reader and writer with the reference Python
implementation. With --data, each tensor also carries its raw bytes as hex (small files only).
"""
import json
import sys

from gguf import GGUFReader


def plain(v):
    """numpy scalars/arrays and bytes to JSON-able Python values."""
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, (bytes, bytearray)):
        return v.decode("utf-8")
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v


def main():
    path = sys.argv[1]
    want_data = "--data" in sys.argv[2:]
    r = GGUFReader(path)
    kv = []
    for key, field in r.fields.items():
        if key.startswith("GGUF."):
            continue
        kv.append({"key": key, "types": [int(t) for t in field.types], "value": plain(field.contents())})
    tensors = []
    for t in r.tensors:
        entry = {
            "name": t.name,
            "shape": [int(x) for x in t.shape],
            "type": int(t.tensor_type),
            "offset": int(t.data_offset) - int(r.data_offset),
            "n_bytes": int(t.n_bytes),
        }
        if want_data:
            entry["data"] = t.data.tobytes().hex()
        tensors.append(entry)
    out = {
        "version": int(r.fields["GGUF.version"].contents()),
        "alignment": int(r.alignment),
        "data_offset": int(r.data_offset),
        "kv": kv,
        "tensors": tensors,
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
