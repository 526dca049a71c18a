"""Greedy continuation of fixed prompts on SmolLM2 F32: ours (longquant) against llama.cpp's.

The oracle for issue 7's "greedy continuation equals llama.cpp's" check. CI cannot afford
llama-cpp-python, so this is a documented script; run it by hand and record the result.

Both sides run the same file: the Q4_1 fixture dequantized to F32 by llama.cpp itself
(`llama-quantize --allow-requantize SmolLM2-135M-Instruct.Q4_1.gguf smol-f32.gguf F32`, a temporary
file). F16 KV cache on both sides (both defaults).

- llama.cpp (llama-cpp-python 0.3.36 against the libllama in LLAMA_CPP_LIB_PATH): the prompt in one
  batch, then one token at a time; greedy = argmax of the last logits (temperature 0 / top_k 1),
  first index on ties.
- ours: `longquant logits MODEL --tokens <ids> --top 2 --json` on the growing sequence at every step
  (a full evaluation per step; the K/V-cached Session is tested against exactly that in
  tests/recall_generate.rs), argmax of the last position.

Prompts are tokenized once by llama.cpp (add_bos per the model, special tokens parsed) and the same
ids are given to both. For each prompt it prints the continuation, the first step where the two
disagree (if any) with both sides' top-2 margin there (a tie within ~1e-3 is numerics, not a bug),
and exits 1 if any prompt disagrees before a stop token or N_STEPS.

Usage: cargo build --release && python3 scripts/llamacpp/greedy_check.py [N_STEPS=32]
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from common import DEFAULT_LIB, ROOT, SMOL, llama_cpp

PROMPTS = [
    "<|im_start|>user\nWrite a short story about a lighthouse keeper.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nExtract the value corresponding to the specified key in the JSON object below.\n\n"
    "JSON data:\n{\"3f2a9c1e-8b7d-4e6f-a5c4-1d2e3f4a5b6c\": \"9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b\", "
    "\"0a1b2c3d-4e5f-4a7b-9c9d-0e1f2a3b4c5d\": \"77665544-3322-4110-8fed-cba987654321\"}\n\n"
    "Key: \"0a1b2c3d-4e5f-4a7b-9c9d-0e1f2a3b4c5d\"\nCorresponding value:<|im_end|>\n<|im_start|>assistant\n",
    "The capital of France is",
]
STOP = {0, 2}  # <|endoftext|>, <|im_end|>
BIN = ROOT / "target/release/longquant"


def ours_next(model, ids):
    out = subprocess.run([str(BIN), "logits", str(model), "--tokens", ",".join(map(str, ids)),
                          "--top", "2", "--json"], check=True, capture_output=True, text=True)
    top = json.loads(out.stdout)["positions"][-1]["top"]
    return top[0]["id"], top[0]["logit"] - top[1]["logit"]


def main():
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 32
    lc = llama_cpp()
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        f32 = os.path.join(tmp, "smol-f32.gguf")
        quantize = os.path.join(os.environ.get("LLAMA_CPP_LIB_PATH", DEFAULT_LIB), "llama-quantize")
        subprocess.run([quantize, "--allow-requantize", str(SMOL), f32, "F32", "2"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for text in PROMPTS:
            llm = lc.Llama(model_path=f32, n_ctx=512, n_batch=512, n_threads=2, n_threads_batch=2,
                           logits_all=True, verbose=False)
            prompt = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
            theirs, margins = [], []
            llm.eval(prompt)
            for _ in range(steps):
                logits = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float32)
                top2 = np.argsort(-logits, kind="stable")[:2]
                tok = int(top2[0])
                margins.append(float(logits[top2[0]] - logits[top2[1]]))
                if tok in STOP:
                    theirs.append(tok)
                    break
                theirs.append(tok)
                llm.eval([tok])
            ours = []
            diverged = None
            for i in range(len(theirs)):
                tok, margin = ours_next(f32, prompt + ours)
                ours.append(tok)
                if tok != theirs[i]:
                    diverged = (i, tok, theirs[i], margin, margins[i])
                    break
            shown = llm.detokenize(theirs).decode("utf-8", "replace")
            if diverged is None:
                print(f"OK   {len(theirs)} tokens identical: {shown!r}")
            else:
                i, a, b, ma, mb = diverged
                bad += 1
                print(f"DIFF at step {i}: ours {a} (margin {ma:.4f}) vs llama.cpp {b} (margin {mb:.4f}); "
                      f"llama.cpp text {shown!r}")
            del llm
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
