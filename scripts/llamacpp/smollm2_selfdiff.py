"""How far llama.cpp is from itself on the SmolLM2 logits cases: for every case of
tests/data/llamacpp/smollm2_logits.json, the same model and tokens evaluated with flash attention on
(what the oracle used) and off, both by llama-cpp-python 0.3.36 on the same libllama. Writes
tests/data/llamacpp/smollm2_selfdiff.json: per case, the relative difference of the last position's
logits (max |on - off| / max |on|) and the positions whose argmax differs.

With quantized activations (Q8_0/Q8_1/Q8_K before every product) the last bits of a logit are chaotic:
a 1-ulp change before a rounding step flips a quantized activation by a whole step. tests/forward_logits.rs
therefore bounds our difference to llama.cpp by llama.cpp's own on/off difference for those models.

Usage: python3 scripts/llamacpp/smollm2_selfdiff.py DIR   (DIR holds smol-f32/q8_0/q4_k_m.gguf, see
smollm2_logits.py; the Q4_1 case uses the fixture)"""
import hashlib
import json
import os
import sys

import numpy as np

from common import OUT, SMOL, llama_cpp


def main():
    lc = llama_cpp()
    doc = json.loads((OUT / "smollm2_logits.json").read_text())
    out = []
    for i, c in enumerate(doc["cases"]):
        tag = c["model"]
        path = str(SMOL) if tag == "q4_1" else os.path.join(sys.argv[1], f"smol-{tag}.gguf")
        # The f32 oracle ran llama-quantize's F32 copy of the fixture (same tensor values as ours,
        # other metadata), so only the converter-made files are checked by hash.
        if tag != "f32" and "model_sha256" in c:
            assert hashlib.sha256(open(path, "rb").read()).hexdigest() == c["model_sha256"], path
        res = {}
        for fa in (True, False):
            llm = lc.Llama(model_path=path, n_ctx=512, n_batch=512, n_ubatch=512, logits_all=True,
                           n_threads=2, n_threads_batch=2, flash_attn=fa, verbose=False)
            llm.eval(c["ids"])
            res[fa] = np.asarray(llm.scores[: len(c["ids"])], dtype=np.float32)
            del llm
        a, b = res[True], res[False]
        rel = float(np.abs(a[-1] - b[-1]).max() / np.abs(a[-1]).max())
        diff = [int(p) for p in np.nonzero(a.argmax(1) != b.argmax(1))[0]]
        out.append({"case": i, "model": tag, "last_rel_fa_on_vs_off": rel, "argmax_differs_at": diff})
        print(tag, len(c["ids"]), f"{rel:.3e}", diff)
    (OUT / "smollm2_selfdiff.json").write_text(json.dumps(
        {"source": "llama-cpp-python 0.3.36, flash_attn=True vs False, otherwise as smollm2_logits.py",
         "cases": out}, indent=1) + "\n")


if __name__ == "__main__":
    main()
