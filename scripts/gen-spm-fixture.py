#!/usr/bin/env python3
"""Writes tests/fixtures/tiny-spm-tokens.json: a small SentencePiece-style vocabulary (tokenizer.ggml.model
"llama") and the token ids llama.cpp gives for test strings with it. Sluice's SentencePiece tokenizer must
give the same ids.

Usage: python3 scripts/gen-spm-fixture.py  (needs `pip install llama-cpp-python gguf`)
"""
import json
import os
import sys
import tempfile

import gguf
import numpy as np
from llama_cpp import Llama

SPACE = "\u2581"
NORMAL, UNKNOWN, CONTROL, BYTE = 1, 2, 3, 6

PIECES = [
    # (piece, score): higher scores merge first.
    (SPACE + "the", -1.0), (SPACE + "world", -1.5), (SPACE + "hello", -2.0), ("he", -2.5), (SPACE + "t", -3.0),
    ("in", -3.2), ("er", -3.4), (SPACE + "a", -3.6), ("or", -3.8), ("ld", -4.0), (SPACE + "w", -4.2),
    (SPACE + "wor", -4.4), ("ll", -4.6), ("hell", -4.8), ("ing", -5.0), (SPACE + "is", -5.2), ("is", -5.4),
    ("12", -5.6), (SPACE + SPACE, -5.8), ("\u6771\u4eac", -6.0), (SPACE, -6.5),
] + [(c, -10.0 - i * 0.01) for i, c in enumerate("abcdefghijklmnopqrstuvwxyzHTW0123456789.,!?'\u6771\u4eac")]

STRINGS = [
    "hello world",
    "the world is the world",
    "Hello World!",
    "  two leading spaces and  two inside",
    "12 123 1234",
    "thing hell hello",
    "\u6771\u4eac and \u5927\u962a",  # the second city has no tokens: byte fallback
    "emoji \U0001F980 falls back to bytes",
    "<s>after a special token</s> and after the end",
    "",
    "tabs\tand\nnewlines",
]


def vocabulary():
    tokens, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [UNKNOWN, CONTROL, CONTROL]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        scores.append(0.0)
        types.append(BYTE)
    for piece, score in PIECES:
        if piece not in tokens:
            tokens.append(piece)
            scores.append(score)
            types.append(NORMAL)
    return tokens, scores, types


def main() -> None:
    tokens, scores, types = vocabulary()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "tiny-spm.gguf")
        w = gguf.GGUFWriter(path, "llama")
        w.add_context_length(64)
        w.add_embedding_length(32)
        w.add_block_count(1)
        w.add_feed_forward_length(64)
        w.add_head_count(2)
        w.add_head_count_kv(2)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_add_bos_token(False)
        w.add_tensor("token_embd.weight", np.zeros((len(tokens), 32), dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        llm = Llama(model_path=path, vocab_only=True, verbose=False)
        cases = [{"text": s, "ids": llm.tokenize(s.encode("utf-8"), add_bos=False, special=True)} for s in STRINGS]
    out = {"reference": "llama.cpp via llama-cpp-python 0.3.36", "tokens": tokens, "scores": scores,
           "token_types": types, "cases": cases}
    json.dump(out, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
