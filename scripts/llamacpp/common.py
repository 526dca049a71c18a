"""Shared set-up for the llama.cpp oracle scripts: load llama-cpp-python against the libllama built
from the same sdist (llama-cpp-python 0.3.36, vendor/llama.cpp/build/bin)."""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_LIB = "/work/cache/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin"
SMOL = ROOT / "fixtures/cache/SmolLM2-135M-Instruct.Q4_1.gguf"
# Oracles that depend on the build's arithmetic class live in tests/data/llamacpp/<class>/
# (avx512: GGML_NATIVE=ON on an AVX-512 VNNI host; avx2: the AVX2-only build, see the README there).
OUT = ROOT / "tests/data/llamacpp" / os.environ.get("LONGQUANT_ORACLE_CLASS", "avx512")


def llama_cpp():
    os.environ.setdefault("LLAMA_CPP_LIB_PATH", DEFAULT_LIB)
    try:
        import llama_cpp  # noqa: PLC0415
    except Exception as e:  # pragma: no cover - set-up failure is reported, not hidden
        sys.exit(f"cannot import llama_cpp (LLAMA_CPP_LIB_PATH={os.environ['LLAMA_CPP_LIB_PATH']}): {e}")
    return llama_cpp
