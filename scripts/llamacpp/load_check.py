"""Does llama.cpp load what longquant writes, and compute the same thing from it?

The issue's "llama.cpp loads what we write" test, as a documented script (CI cannot afford building
llama-cpp-python). Needs: `cargo build --release` and `cargo build --release --example synth_checkpoint`,
llama-cpp-python 0.3.36 with libllama from the same sdist (LLAMA_CPP_LIB_PATH, default below) and its
llama-quantize, gguf-py, numpy, and the fixtures (fixtures/fetch.sh).

1. SmolLM2 (real model). Ours: export-hf(fixture Q4_1) -> `longquant convert` to F32, Q8_0, Q4_K_M, and
   Q4_K_M again as a split set (--split-max-size 40M). llama.cpp's own pipeline: convert_hf_to_gguf.py
   needs torch (not installed), so its "own F32 file" is `llama-quantize --allow-requantize fixture F32`
   (llama.cpp dequantizing the fixture itself), and its Q8_0 / Q4_K_M are llama-quantize of that F32.
   Every file is loaded with llama_cpp.Llama; logits for a fixed prompt (all positions) are compared
   ours vs llama.cpp's, type by type, and the tensors' bytes are compared with gguf-py.
2. ProLong-shaped tiny checkpoint (examples/synth_checkpoint.rs, tiny preset, real Llama-3 tokenizer)
   -> `longquant convert --type Q8_0`; llama.cpp's tokenization (Llama.tokenize, add_bos=True,
   special=True) of a set of strings is written to tests/data/convert/llama3_tokenize_llamacpp.json;
   tests/convert_tokenize.rs checks that the `tokenizers` crate, on the tokenizer.json the
   checkpoint ships, gives the same ids.

Usage: python3 scripts/llamacpp/load_check.py [--keep DIR]
Exit status 0 when every check passes; prints one line per check."""
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
LIB = os.environ.setdefault("LLAMA_CPP_LIB_PATH", "/work/cache/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin")
QUANTIZE = Path(LIB) / "llama-quantize"
LQ = ROOT / "target/release/longquant"
SYNTH = ROOT / "target/release/examples/synth_checkpoint"
SMOL = ROOT / "fixtures/cache/SmolLM2-135M-Instruct.Q4_1.gguf"
TOKENIZE_OUT = ROOT / "tests/data/convert/llama3_tokenize_llamacpp.json"

PROMPT = (
    "<|im_start|>user\nThe quick brown fox jumps over the lazy dog. Explain, step by step, why 17 * 23 = 391 "
    "and what a prime number is.<|im_end|>\n<|im_start|>assistant\n"
)

STRINGS = [
    "Hello world",
    " Hello world",
    "Hello, world! How's it going? I'm fine; you're great.",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines\n\n\nand\r\nCRLF",
    "1234567890 3.14159 1,000,000 2024-05-17 0xDEADBEEF",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "fn main() { let v: Vec<u8> = vec![1, 2, 3]; println!(\"{v:?}\"); }",
    "长上下文语言模型的量化与评估",
    "日本語のテキストと한국어 텍스트",
    "Emoji: 🦙🔥👍🏽 👨‍👩‍👧‍👦 ✅",
    "Ünïcödé àccents: naïve café résumé",
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "<|start_header_id|>user<|end_header_id|>\n\nSummarise the book.<|eot_id|>",
]

failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def run(*args):
    subprocess.run([str(a) for a in args], check=True, capture_output=True)


def logits(lc, path, text):
    llm = lc.Llama(model_path=str(path), n_ctx=512, n_batch=512, logits_all=True, n_threads=2,
                   n_threads_batch=2, verbose=False)
    toks = llm.tokenize(text.encode(), add_bos=True, special=True)
    llm.eval(toks)
    out = np.array(llm.scores[: len(toks)], dtype=np.float32)
    del llm
    return toks, out


def tensor_hashes(path):
    from gguf import GGUFReader  # noqa: PLC0415

    r = GGUFReader(str(path))
    return {t.name: (t.tensor_type.name, hashlib.sha256(np.asarray(t.data).view(np.uint8).tobytes()).hexdigest())
            for t in r.tensors}


def main():
    keep = sys.argv[sys.argv.index("--keep") + 1] if "--keep" in sys.argv else None
    import llama_cpp as lc  # noqa: PLC0415

    tmp = Path(keep or tempfile.mkdtemp(prefix="lq-load-"))
    tmp.mkdir(parents=True, exist_ok=True)
    hf = tmp / "SmolLM2-135M-Instruct"
    run(LQ, "export-hf", SMOL, hf, "--dtype", "f32", "--force")
    ours, lcpp = {}, {}
    for ty in ["F32", "Q8_0", "Q4_K_M"]:
        ours[ty] = tmp / f"ours.{ty}.gguf"
        run(LQ, "convert", hf, "-o", ours[ty], "--type", ty, "--force")
    run(LQ, "convert", hf, "-o", tmp / "ours.split.gguf", "--type", "Q4_K_M", "--split-max-size", "40M", "--force")
    split_first = sorted(tmp.glob("ours.split-00001-of-*.gguf"))[0]
    lcpp["F32"] = tmp / "lcpp.F32.gguf"
    run(QUANTIZE, "--allow-requantize", SMOL, lcpp["F32"], "F32", "2")
    for ty in ["Q8_0", "Q4_K_M"]:
        lcpp[ty] = tmp / f"lcpp.{ty}.gguf"
        run(QUANTIZE, lcpp["F32"], lcpp[ty], ty, "2")

    results = {}
    for ty in ["F32", "Q8_0", "Q4_K_M"]:
        t_o, l_o = logits(lc, ours[ty], PROMPT)
        t_l, l_l = logits(lc, lcpp[ty], PROMPT)
        check(t_o == t_l, f"SmolLM2 {ty}: same prompt tokens ({len(t_o)})")
        diff = float(np.abs(l_o - l_l).max())
        rel = diff / float(np.abs(l_l).max())
        results[ty] = (diff, rel)
        check(l_o.shape == l_l.shape and diff <= 1e-3 * float(np.abs(l_l).max()),
              f"SmolLM2 {ty}: logits ours vs llama.cpp's, max |diff| {diff:.3g} (relative {rel:.3g}), "
              f"argmax agree {float((l_o.argmax(1) == l_l.argmax(1)).mean()):.3f}")
        ho, hl = tensor_hashes(ours[ty]), tensor_hashes(lcpp[ty])
        same = sum(ho[n] == hl.get(n) for n in ho)
        check(set(ho) == set(hl), f"SmolLM2 {ty}: same tensor names and types ({len(ho)})")
        print(f"     {same}/{len(ho)} tensors byte-identical to llama.cpp's")
    _, l_s = logits(lc, split_first, PROMPT)
    _, l_q = logits(lc, ours["Q4_K_M"], PROMPT)
    check(np.array_equal(l_s, l_q), f"split set {split_first.name}: loads, logits equal the single file's")

    synth = tmp / "prolong-tiny"
    run(SYNTH, "--preset", "tiny", "--out", synth)
    pt = tmp / "prolong-tiny.Q8_0.gguf"
    run(LQ, "convert", synth, "-o", pt, "--type", "Q8_0", "--force")
    llm = lc.Llama(model_path=str(pt), vocab_only=True, verbose=False)
    table = []
    for s in STRINGS:
        table.append({"text": s, "ids": llm.tokenize(s.encode(), add_bos=True, special=True)})
    check(all(t["ids"][0] == 128000 for t in table), "prolong-tiny: llama.cpp adds BOS 128000 (add_bos_token true)")
    TOKENIZE_OUT.parent.mkdir(parents=True, exist_ok=True)
    doc = {"source": "llama-cpp-python 0.3.36 Llama(vocab_only=True).tokenize(text, add_bos=True, special=True) "
                     "on `longquant convert` of the synth_checkpoint tiny preset (scripts/llamacpp/load_check.py)",
           "cases": table}
    TOKENIZE_OUT.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"     wrote {TOKENIZE_OUT.relative_to(ROOT)} ({len(table)} strings); tests/convert_tokenize.rs compares")
    if not keep:
        for p in sorted(tmp.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        tmp.rmdir()
    print("all checks passed" if not failures else f"{len(failures)} checks failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
