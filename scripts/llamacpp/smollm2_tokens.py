"""Writes tests/data/llamacpp/smollm2_tokens.json: llama.cpp's tokenization of a few texts with the
SmolLM2 fixture, add_special=True (BOS only if the model asks: SmolLM2 does not), parse_special=False
(as llama-perplexity tokenizes). Usage: python3 scripts/llamacpp/smollm2_tokens.py"""
import json

from common import ROOT, SMOL, llama_cpp

TEXTS = [
    "Hello world",
    " Hello, world! How are you?",
    "The year 2024 had 366 days; 1234567 is a number.",
    "Tabs\tand\nnewlines\n\n  and   spaces   ",
    "Unicode: Äpfel, нещо на Български, 🦙.cpp, 日本語",
    "<|im_start|>user\nHi<|im_end|>",
    "don't I'll we've they're O'Neil's",
    "x = [1, 2, 3]\nprint(x[0] ** 2)  # comment",
]


def main():
    lc = llama_cpp()
    llm = lc.Llama(model_path=str(SMOL), vocab_only=True, verbose=False)
    cases = [{"text": t, "ids": llm.tokenize(t.encode("utf-8"), add_bos=True, special=False)} for t in TEXTS]
    doc = {
        "source": "llama-cpp-python 0.3.36 (libllama from the same sdist), Llama.tokenize(text, add_bos=True, special=False)",
        "model": SMOL.name,
        "cases": cases,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    head = {k: v for k, v in doc.items() if k != "cases"}
    lines = [json.dumps(c, ensure_ascii=False) for c in cases]
    body = json.dumps(head, ensure_ascii=False)[:-1] + ', "cases": [\n' + ",\n".join(lines) + "\n]}\n"
    (ROOT / "tests/data/llamacpp/smollm2_tokens.json").write_text(body)


if __name__ == "__main__":
    main()
