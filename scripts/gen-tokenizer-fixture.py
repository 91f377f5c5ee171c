#!/usr/bin/env python3
"""Writes tests/fixtures/smollm2-tokens.json: token ids that llama.cpp (the reference tokenizer for GGUF
files) gives for a set of test strings with the demo model. Sluice's tokenizer must give the same ids.

Usage: python3 scripts/gen-tokenizer-fixture.py MODEL.gguf  (needs `pip install llama-cpp-python`)
"""
import json
import sys

from llama_cpp import Llama

STRINGS = [
    "What is the capital of Japan?",
    "The year 2024 had 366 days; pi is 3.14159.",
    "Phone: +1 (555) 010-9999, order #A12345!",
    "  leading spaces,   runs of   spaces, and trailing   ",
    "Tabs\tand\nnewlines\r\nand CRLF\r\n\r\n",
    "def f(x):\r\n    return x ** 2  # square\r\n",
    "https://example.com/path?q=1&lang=en#frag",
    "Ünïcödé façade naïve coöperate — “quotes” ‘single’ …",
    "東京は日本の首都です。人口は約1400万人。",
    "Москва — столица России, 12 миллионов жителей.",
    "emoji 🦀🚀👍🏽 and flags 🇫🇷",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
    "don't won't I'm you're they've we'll she'd",
    "1234567890 00 007 1,000,000 3.0e-8",
    "mixed123abc456 x2y3 ½ ² ٣",
    "\u00a0non-breaking\u2003em space\u200bzero width",
    "control\x04bytes\x07without\x00tokens\x1f",
]


def main() -> None:
    llm = Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)
    cases = [
        {"text": s, "ids": llm.tokenize(s.encode("utf-8"), add_bos=False, special=True)}
        for s in STRINGS
    ]
    cases_json = ",\n".join("  " + json.dumps(c, ensure_ascii=False) for c in cases)
    sys.stdout.write('{\n "model": "SmolLM2-135M-Instruct.Q4_1.gguf",\n'
                     ' "reference": "llama.cpp via llama-cpp-python 0.3.36",\n'
                     f' "cases": [\n{cases_json}\n ]\n}}')
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
