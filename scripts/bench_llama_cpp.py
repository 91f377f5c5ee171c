#!/usr/bin/env python3
"""The llama.cpp side of the worker benchmark (run by `cargo bench -p sluice-engine --bench engine`).

Feeds exactly the prompt token ids the Sluice engine used, decodes greedily with the end-of-turn tokens
banned (fixed-length decoding, as the engine's `ignore_eos`), and prints one JSON object with prompt
tokens/s, decode tokens/s, time to first token and peak RSS. Needs `pip install llama-cpp-python`.
"""
import argparse
import json
import resource
import time

import numpy as np
import llama_cpp
from llama_cpp import Llama


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--prompt-ids", required=True,
                   help="JSON file: {long: [...], short: [...], text: [...], banned: [...]}")
    p.add_argument("--decode", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    ids = json.load(open(args.prompt_ids))

    load_start = time.perf_counter()
    llm = Llama(model_path=args.model, n_ctx=4096, n_batch=512, n_threads=args.threads,
                n_threads_batch=args.threads, verbose=False)
    load_seconds = time.perf_counter() - load_start
    n_vocab = llm.n_vocab()

    def prefill(tokens):
        llm.reset()
        start = time.perf_counter()
        llm.eval(tokens)
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(n_vocab,))
        logits[ids["banned"]] = -np.inf
        first = int(logits.argmax())
        return time.perf_counter() - start, first

    def decode(first, n):
        token = first
        start = time.perf_counter()
        for _ in range(n - 1):
            llm.eval([token])
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(n_vocab,))
            logits[ids["banned"]] = -np.inf
            token = int(logits.argmax())
        return time.perf_counter() - start

    prefill_runs = [prefill(ids["long"])[0] for _ in range(args.repeat)]
    decode_runs = []
    for _ in range(args.repeat):
        _, first = prefill(ids["short"])
        decode_runs.append(decode(first, args.decode))
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # before a second model is loaded
    # Perplexity of the same tokens, every position's logits from one pass.
    scorer = Llama(model_path=args.model, n_ctx=4096, n_batch=512, n_threads=args.threads,
                   n_threads_batch=args.threads, logits_all=True, verbose=False)
    text = ids["text"]
    scorer.eval(text)
    nll = 0.0
    for i in range(len(text) - 1):
        row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(scorer._ctx.ctx, i), shape=(n_vocab,))
        row = row.astype(np.float64)
        m = row.max()
        nll += m + np.log(np.exp(row - m).sum()) - row[text[i + 1]]
    perplexity = float(np.exp(nll / (len(text) - 1)))

    prefill_s = sorted(prefill_runs)[len(prefill_runs) // 2]
    decode_s = sorted(decode_runs)[len(decode_runs) // 2]
    print(json.dumps({
        "engine": f"llama.cpp (llama-cpp-python {llama_cpp.__version__})",
        "load_seconds": load_seconds,
        "prompt_tokens": len(ids["long"]),
        "prompt_tokens_per_second": len(ids["long"]) / prefill_s,
        "time_to_first_token_seconds": prefill_s,
        "decode_tokens_per_second": (args.decode - 1) / decode_s,
        "peak_rss_bytes": peak_rss,
        "perplexity": perplexity,
    }))


if __name__ == "__main__":
    main()
