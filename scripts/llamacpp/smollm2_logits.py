"""Writes llama.cpp's logits for fixed prompts on the SmolLM2 fixture, for tests/forward_logits.rs.

Two models: the Q4_1 fixture as shipped, and its F32 dequantization made by llama.cpp itself
(`llama-quantize --allow-requantize SmolLM2-135M-Instruct.Q4_1.gguf smol-f32.gguf F32`, a temporary
file). For each (model, prompt): tests/data/llamacpp/smollm2_<model>_logits_<i>.f32 holds the last
position's n_vocab logits (raw little-endian f32); smollm2_logits.json holds the prompts, their ids,
the argmax and top-1/top-2 margin at every position, and the file names.

Settings: llama-cpp-python 0.3.36 with libllama from the same sdist; one batch; logits_all=True;
F16 KV cache (default); flash_attn=True, as llama-perplexity runs by default on CPU. Every prompt has at
least 64 tokens (GGML_FA_TILE_Q), so ggml takes its tiled f32 flash-attention path, as it does for
perplexity chunks.

Two more models are made by our own converter from that F32 file, for the issue's "Q8_0 and Q4_K_M
made by our converter" check: `longquant quantize --type Q8_0|Q4_K_M smol-f32.gguf smol-<type>.gguf`,
where smol-f32.gguf is `longquant quantize --type F32 --allow-requantize` of the fixture. Their sha256
is recorded per case; tests/forward_logits.rs remakes the files and checks it.

Usage: python3 scripts/llamacpp/smollm2_logits.py [DIR_WITH_smol-q8_0.gguf_AND_smol-q4_k_m.gguf]"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from common import DEFAULT_LIB, OUT, SMOL, llama_cpp

PROMPTS = [
    "Permission is hereby granted, free of charge, to any person obtaining a copy of this software and "
    "associated documentation files (the \"Software\"), to deal in the Software without restriction, "
    "including without limitation the rights to use, copy, modify, merge, publish, distribute, sublicense, "
    "and/or sell copies of the Software, and to permit persons to whom the Software is furnished to do so, "
    "subject to the following conditions:",
    "<|im_start|>system\nYou are a helpful assistant who answers briefly.<|im_end|>\n<|im_start|>user\n"
    "My garden has three apple trees, two pear trees and a fig. Each apple tree gives 40 apples a year. "
    "How many apples do I get in two years? Please explain it step by step.<|im_end|>\n<|im_start|>assistant\n",
]


def run(lc, path, tag):
    cases = []
    for i, text in enumerate(PROMPTS):
        llm = lc.Llama(model_path=str(path), n_ctx=512, n_batch=512, n_ubatch=512, logits_all=True,
                       n_threads=2, n_threads_batch=2, flash_attn=True, verbose=False)
        ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        assert len(ids) >= 64, (len(ids), text)
        llm.eval(ids)
        scores = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
        name = f"smollm2_{tag}_logits_{i}.f32"
        scores[-1].astype("<f4").tofile(OUT / name)
        top2 = np.sort(scores, axis=1)[:, -2:]
        sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
        cases.append({"model": tag, "model_sha256": sha, "text": text, "ids": ids,
                      "argmax": [int(a) for a in scores.argmax(axis=1)],
                      "margin": [round(float(m), 4) for m in top2[:, 1] - top2[:, 0]],
                      "last_logits_file": name})
        del llm
    return cases


def main():
    lc = llama_cpp()
    cases = run(lc, SMOL, "q4_1")
    with tempfile.TemporaryDirectory() as tmp:
        f32 = os.path.join(tmp, "smol-f32.gguf")
        quantize = os.path.join(os.environ.get("LLAMA_CPP_LIB_PATH", DEFAULT_LIB), "llama-quantize")
        subprocess.run([quantize, "--allow-requantize", str(SMOL), f32, "F32", "2"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cases += run(lc, f32, "f32")
    if len(sys.argv) > 1:
        for tag in ("q8_0", "q4_k_m"):
            cases += run(lc, os.path.join(sys.argv[1], f"smol-{tag}.gguf"), tag)
    doc = {"source": "llama-cpp-python 0.3.36: Llama(n_ctx=512, n_batch=512, logits_all=True, flash_attn=True, "
                     "F16 KV); tokenize(add_bos=True, special=True); eval(ids); scores",
           "model": SMOL.name, "cases": cases}
    (OUT / "smollm2_logits.json").write_text(json.dumps(doc, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
