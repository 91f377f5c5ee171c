"""Drives a running Sluice gateway with the official OpenAI Python SDK, one scenario per run.

Usage: client.py SCENARIO, with SLUICE_BASE_URL and SLUICE_API_KEY in the environment (and LOCAL_MODEL,
CLOUD_MODEL). The last line of standard output is a JSON object with what the scenario observed; the Rust
integration tests in tests/gateway.rs assert on it. A scenario exits non-zero only when the SDK itself
fails in a way the scenario did not expect.
"""

import json
import os
import sys
import time

import openai
from openai import OpenAI

BASE_URL = os.environ["SLUICE_BASE_URL"]
API_KEY = os.environ["SLUICE_API_KEY"]
LOCAL = os.environ.get("LOCAL_MODEL", "smollm2-135m-instruct")
CLOUD = os.environ.get("CLOUD_MODEL", "gpt-4o-mini")
JAPAN = [{"role": "user", "content": "What is the capital of Japan?"}]
LONG = [{"role": "user", "content": "Write a very long story about a dragon who learns to bake bread."}]
ROUTING = ["x-sluice-route", "x-sluice-backend", "x-sluice-rule", "x-sluice-sensitivity",
           "x-sluice-decision-id", "x-request-id", "x-sluice-model", "x-sluice-substituted-for"]
RATE = ["x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
        "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"]
TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}]


def client(**kw):
    # No SDK retries: every retry the tests see must be the gateway's.
    return OpenAI(base_url=BASE_URL, api_key=API_KEY, max_retries=0, **kw)


def headers_of(raw):
    return {h: raw.headers.get(h) for h in ROUTING + RATE}


def plain(c, model, messages, **kw):
    raw = c.chat.completions.with_raw_response.create(model=model, messages=messages, **kw)
    r = raw.parse()
    choice = r.choices[0]
    return {
        "headers": headers_of(raw),
        "object": r.object,
        "content": choice.message.content,
        "finish_reason": choice.finish_reason,
        "tool_calls": [tc.model_dump() for tc in (choice.message.tool_calls or [])],
        "usage": r.usage.model_dump() if r.usage else None,
    }


def streamed(c, model, messages, include_usage, **kw):
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    raw = c.chat.completions.with_raw_response.create(model=model, messages=messages, stream=True, **extra, **kw)
    content, finish, usage, chunks, ids, last_choices = "", None, None, 0, set(), None
    for chunk in raw.parse():
        chunks += 1
        ids.add(chunk.id)
        last_choices = len(chunk.choices)
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        for choice in chunk.choices:
            content += choice.delta.content or ""
            finish = choice.finish_reason or finish
    return {
        "headers": headers_of(raw),
        "content_type": raw.headers.get("content-type"),
        "content": content,
        "finish_reason": finish,
        "usage": usage,
        "chunks": chunks,
        "ids": len(ids),
        "last_chunk_choices": last_choices,
    }


def error_of(call):
    started = time.monotonic()
    try:
        call()
    except openai.APIStatusError as e:
        body = e.body if isinstance(e.body, dict) else {}
        return {"status": e.status_code, "code": body.get("code"), "message": str(body.get("message")),
                "retry_after": e.response.headers.get("retry-after"),
                "headers": {h: e.response.headers.get(h) for h in ROUTING},
                "seconds": time.monotonic() - started}
    except openai.APIError as e:
        body = e.body if isinstance(e.body, dict) else {}
        return {"status": None, "code": body.get("code"), "message": e.message, "kind": type(e).__name__,
                "seconds": time.monotonic() - started}
    return {"status": 200, "seconds": time.monotonic() - started}


def basic():
    c = client()
    return {
        "models": sorted(m.id for m in c.models.list()),
        "local": plain(c, LOCAL, JAPAN, temperature=0, max_tokens=32),
        "local_stream": streamed(c, LOCAL, JAPAN, True, temperature=0, max_completion_tokens=32),
        "cloud": plain(c, CLOUD, JAPAN, max_tokens=5, user="u-1"),
        "cloud_stream": streamed(c, CLOUD, JAPAN, True),
        "cloud_stream_no_usage": streamed(c, CLOUD, JAPAN, False),
        "declared": plain(c, LOCAL, JAPAN, temperature=0, max_tokens=8,
                          extra_headers={"x-sluice-sensitivity": "confidential"}),
    }


def errors():
    c = client()
    bad = OpenAI(base_url=BASE_URL, api_key="sk-wrong", max_retries=0)
    return {
        "wrong_key": error_of(lambda: bad.chat.completions.create(model=LOCAL, messages=JAPAN)),
        "unknown_model": error_of(lambda: c.chat.completions.create(model="gpt-9", messages=JAPAN)),
        "n2": error_of(lambda: c.chat.completions.create(model=LOCAL, messages=JAPAN, n=2)),
        "no_messages": error_of(lambda: c.chat.completions.create(model=LOCAL, messages=[])),
        "hot": error_of(lambda: c.chat.completions.create(model=LOCAL, messages=JAPAN, temperature=5)),
        "local_tools": error_of(lambda: c.chat.completions.create(model=LOCAL, messages=JAPAN, tools=TOOLS)),
        "restricted_to_cloud": error_of(lambda: c.chat.completions.create(
            model=CLOUD, messages=JAPAN, extra_headers={"x-sluice-sensitivity": "restricted"})),
    }


def tools():
    c = client()
    first = plain(c, CLOUD, [{"role": "user", "content": "Weather in Paris?"}], tools=TOOLS, tool_choice="auto")
    call = first["tool_calls"][0]
    follow = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "{\"temp_c\": 21}"},
    ]
    second = plain(c, CLOUD, follow, tools=TOOLS)
    stream = streamed(c, CLOUD, [{"role": "user", "content": "Weather in Oslo?"}], False, tools=TOOLS)
    return {"first": first, "second": second, "stream": stream, "tools_sent": TOOLS}


def sensitive():
    c = client()
    # Made at run time, so no secret-shaped literal sits in the repository.
    card = " ".join(["4111"] + ["1111"] * 3)
    aws = "AKIA" + "Q3EGTZ7KX2LMNP4R"
    user = lambda text: [{"role": "user", "content": text}]
    cases = {
        "card_in_content": dict(messages=user(f"Charge {card} please")),
        "aws_key_in_system": dict(messages=[{"role": "system", "content": f"key {aws}"}] + user("hi")),
        "card_in_tool_args": dict(messages=[
            {"role": "user", "content": "pay"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
             "function": {"name": "pay", "arguments": json.dumps({"card": card})}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "done"}]),
        "card_with_public_header": dict(messages=user(f"card {card}"),
                                        extra_headers={"x-sluice-sensitivity": "public"}),
    }
    out = {name: error_of(lambda kw=kw: c.chat.completions.create(model=CLOUD, **kw)) for name, kw in cases.items()}
    out["local_card"] = plain(c, LOCAL, user(f"Is {card} a number? Answer yes or no."), temperature=0, max_tokens=8)
    out["benign"] = plain(c, CLOUD, user("What is the capital of Japan?"))
    return out


def policy():
    """Sensitive data in every place a request can carry it, asked of the cloud model, with and without
    headers that try to talk the gateway out of it; and one benign request."""
    c = client()
    card = " ".join(["4111"] + ["1111"] * 3)
    aws = "AKIA" + "Q3EGTZ7KX2LMNP4R"
    mail = "jane.doe" + "@example.com"
    user = lambda text: [{"role": "user", "content": text}]
    lie = {"x-sluice-sensitivity": "public", "x-sluice-prefer": "cloud"}
    cases = {
        "content": dict(messages=user(f"Charge {card} please")),
        "content_parts": dict(messages=[{"role": "user", "content": [{"type": "text", "text": f"mail {mail}"}]}]),
        "system": dict(messages=[{"role": "system", "content": f"key {aws}"}] + user("hi")),
        "name": dict(messages=[{"role": "user", "content": "hi", "name": "AKIA" + "Q3EGTZ7KX2LMNP4R"}]),
        "tool_call_arguments": dict(messages=[
            {"role": "user", "content": "pay"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
             "function": {"name": "pay", "arguments": json.dumps({"card": card})}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "done"}]),
        "tool_definition": dict(messages=user("hi"), tools=[{"type": "function", "function": {
            "name": "pay", "description": f"Pays with the company card {card}"}}]),
        "stop": dict(messages=user("hi"), stop=[mail]),
        "content_with_lying_headers": dict(messages=user(f"Charge {card} please"), extra_headers=lie),
        "system_with_lying_headers": dict(messages=[{"role": "system", "content": f"key {aws}"}] + user("hi"),
                                          extra_headers=lie),
    }
    out = {}
    for name, kw in cases.items():
        kw.setdefault("max_tokens", 8)
        try:
            raw = c.chat.completions.with_raw_response.create(model=CLOUD, **kw)
            r = raw.parse()
            out[name] = {"status": 200, "headers": headers_of(raw), "model": r.model,
                         "content": r.choices[0].message.content}
        except openai.APIStatusError as e:
            body = e.body if isinstance(e.body, dict) else {}
            out[name] = {"status": e.status_code, "code": body.get("code"), "message": str(body.get("message")),
                         "headers": {h: e.response.headers.get(h) for h in ROUTING}}
    out["benign"] = plain(c, CLOUD, JAPAN)
    return out


def costs():
    """Three cloud answers of different sizes and one local answer, with the usage each reported."""
    c = client()
    cloud = [plain(c, CLOUD, [{"role": "user", "content": text}], max_tokens=n)["usage"]
             for text, n in [("Hello there", 5), ("Tell me a long story about the sea " * 20, 40),
                             ("Why is the sky blue?", 12)]]
    local = plain(c, LOCAL, JAPAN, temperature=0, max_tokens=16)["usage"]
    return {"cloud": cloud, "local": local}


def disconnect(model=LOCAL):
    c = client()
    stream = c.chat.completions.create(model=model, messages=LONG, stream=True, max_tokens=400,
                                       temperature=0)
    seen = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            seen += 1
        if seen >= 3:
            break
    stream.close()
    return {"chunks_read": seen}


def disconnect_cloud():
    return disconnect(CLOUD)


def killed():
    c = client(timeout=60)
    started = time.monotonic()
    content = ""
    try:
        for chunk in c.chat.completions.create(model=LOCAL, messages=LONG, stream=True, max_tokens=2000,
                                               temperature=0):
            if chunk.choices and chunk.choices[0].delta.content:
                if not content:
                    print("STREAM_STARTED", flush=True)
                content += chunk.choices[0].delta.content
    except openai.APIError as e:
        body = e.body if isinstance(e.body, dict) else {}
        return {"raised": type(e).__name__, "code": body.get("code"), "message": e.message,
                "content_chars": len(content), "seconds": time.monotonic() - started}
    return {"raised": None, "content_chars": len(content), "seconds": time.monotonic() - started}


def retry():
    c = client()
    return {"answer": plain(c, CLOUD, JAPAN)}


def local_once():
    return {"answer": plain(client(), LOCAL, JAPAN, temperature=0, max_tokens=32)}


def up():
    c = client()
    card = " ".join(["4111"] + ["1111"] * 3)
    return {
        "local": plain(c, LOCAL, JAPAN, temperature=0, max_tokens=32),
        "cloud": plain(c, CLOUD, JAPAN),
        "card": plain(c, CLOUD, [{"role": "user", "content": f"Is {card} a number?"}], max_tokens=8),
        "auto": plain(c, "auto", JAPAN, max_tokens=8),
        "models": [m.id for m in c.models.list()],
        "embed_patient": embed(c, model=EMBED_LOCAL, input=[PATIENT]),
        "embed_public": embed(c, model=EMBED_CLOUD, input=PUBLIC_TEXTS),
        "embed_patient_cloud": error_of(lambda: c.embeddings.create(model=EMBED_CLOUD, input=PATIENT)),
    }


# Benign sentences enough for well over 512 model tokens, so what follows them is past the first window.
FILLER = " ".join([
    "Our team reviewed the backlog and agreed to close the stale tickets before the next sprint.",
    "The build pipeline now caches dependencies, which cut the average run from twelve to seven minutes.",
    "Several customers asked for an export to spreadsheets, so we scoped a small feature for it.",
    "The office will be closed on the public holiday, and the on-call rota has been updated accordingly.",
    "We also discussed how to measure the latency of the search service during peak hours.",
    "Finally, the design review for the new onboarding flow was moved to the following week.",
] * 12)


def prose():
    """Personal data written as prose, asked of the cloud model in every place a request carries text, and
    questions that name no one or only a public figure."""
    c = client()
    user = lambda text: [{"role": "user", "content": text}]
    cases = {
        "name_and_diagnosis": user("Patient Maria Gonzalez, DOB 1975-03-04, was diagnosed with HIV last week. "
                                   "Draft a letter to her employer."),
        "birth_date": user("Send a card to Tomasz Kowalski, born on 4 March 1975, from the whole team."),
        "address_in_system": [{"role": "system", "content": "You write letters to Jonathan Whitaker, "
                               "42 Willow Lane, Apt 3, Springfield, IL 62704."}] + user("Say hello."),
        "tool_arguments": [
            {"role": "user", "content": "File the note."},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
             "function": {"name": "file_note", "arguments": json.dumps(
                 {"patient": "Maria Gonzalez", "condition": "schizophrenia"})}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "filed"}],
        "past_the_first_window": user(FILLER + " Separately, please write to the clinic: our employee "
                                      "Maria Gonzalez was diagnosed with breast cancer and needs leave."),
        "public_figure": user("Who was Abraham Lincoln?"),
        "name_alone": user("Write a birthday poem for my colleague Priya Raman."),
        "nobody": user(FILLER),
    }
    out = {}
    for name, messages in cases.items():
        try:
            raw = c.chat.completions.with_raw_response.create(model=CLOUD, messages=messages, max_tokens=8)
            r = raw.parse()
            out[name] = {"status": 200, "headers": headers_of(raw), "model": r.model}
        except openai.APIStatusError as e:
            body = e.body if isinstance(e.body, dict) else {}
            out[name] = {"status": e.status_code, "code": body.get("code"),
                         "headers": {h: e.response.headers.get(h) for h in ROUTING}}
    return out


def redact_values():
    """The values the redaction tests send, made at run time (no secret-shaped literal in the repository)."""
    return {
        "name": "Maria Gonzalez",
        "address": "42 Willow Lane, Springfield, IL 62704",
        "email": "maria.g@northwind.example",
        "phone": "+1 415 555 0132",
        "card": " ".join(["4111"] + ["1111"] * 3),
        "iban": "DE89 3704 0044 0532 0130 00",
        "ssn": "-".join(["536", "22", "8726"]),
    }


SEND_TOOL = [{"type": "function", "function": {
    "name": "send_note", "description": "Send a note.",
    "parameters": {"type": "object", "properties": {"note": {"type": "string"}}, "required": ["note"]}}}]


def streamed_tools(c, messages, **kw):
    raw = c.chat.completions.with_raw_response.create(model=CLOUD, messages=messages, stream=True, **kw)
    args, finish = "", None
    for chunk in raw.parse():
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                args += (call.function.arguments or "") if call.function else ""
            finish = choice.finish_reason or finish
    return {"headers": headers_of(raw), "arguments": args, "finish_reason": finish}


def redact():
    """Requests whose sensitive data is replaced before the cloud (a stand-in that echoes what it got)
    sees it, asked plain and streamed, in content and as tool-call arguments; then requests that must
    not leave."""
    c = client()
    v = redact_values()
    user = lambda text: [{"role": "user", "content": text}]
    texts = {
        "name": f"Write a polite reminder to {v['name']} that invoice 88213 is overdue; {v['name']} is away "
                "until Monday.",
        "address": f"Ship the replacement to {v['address']} by Friday.",
        "email": f"Write a polite reminder to {v['email']} that invoice 88213 is overdue.",
        "phone": f"Call {v['phone']} about invoice 88213, or write to {v['email']}.",
        "card": f"Refund the card {v['card']} for order 88213.",
        "iban": f"Pay invoice 88213 to {v['iban']} today.",
        "ssn": f"The applicant's SSN is {v['ssn']}; write a cover note.",
    }
    out = {"texts": texts, "values": v}
    for name, text in texts.items():
        out[name] = plain(c, CLOUD, user(text))
        # Three shifts of the same text put every placeholder across every boundary of the stand-in's
        # three-byte tokens.
        out[name + "_stream"] = [streamed(c, CLOUD, user(" " * shift + text), True) for shift in range(3)]
    everything = " ".join(texts.values())
    out["tools"] = plain(c, CLOUD, user(everything), tools=SEND_TOOL,
                         tool_choice={"type": "function", "function": {"name": "send_note"}})
    out["tools_stream"] = streamed_tools(c, user(everything), tools=SEND_TOOL,
                                         tool_choice={"type": "function", "function": {"name": "send_note"}})
    out["everything"] = everything
    # Never redacted: a private key travels with the e-mail address, so the fallback serves it locally.
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\n" + "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAAB" * 2 \
        + "\n-----END OPENSSH PRIVATE KEY-----"
    out["private_key"] = plain(c, CLOUD, user(f"Send this key to {v['email']}:\n{key}"), max_tokens=8)
    # The address is a key of the request's metadata: keys are never rewritten, so the redacted form still
    # carries it, the proof finds it, and the fallback decides.
    out["in_a_key"] = plain(c, CLOUD, user("Say hello."), max_tokens=8, metadata={v["email"]: "vip"})
    return out


def up_redact():
    """The letter of `sluice up`'s banner, asked of the cloud model plain and streamed."""
    c = client()
    text = ("Write a polite reminder to Maria Gonzalez (maria.g@northwind.example, +1 415 555 0132) that "
            "invoice 88213 is overdue. Maria Gonzalez prefers e-mail.")
    messages = [{"role": "user", "content": text}]
    return {"text": text, "plain": plain(c, CLOUD, messages), "stream": streamed(c, CLOUD, messages, True)}


def hang():
    c = client(timeout=30)
    return {
        "plain": error_of(lambda: c.chat.completions.create(model=CLOUD, messages=JAPAN)),
        "stream": error_of(lambda: list(c.chat.completions.create(model=CLOUD, messages=JAPAN, stream=True))),
    }


def burst():
    """BURST requests at once from BURST threads, each its own SDK client, spread over the gateways in
    BASE_URLS (comma-separated) in turn; each asks MODEL for at most MAX_TOKENS with `user` set to USER.
    Reports every outcome: status, error code, routing and rate-limit headers, Retry-After."""
    import concurrent.futures
    urls = os.environ.get("BASE_URLS", BASE_URL).split(",")
    n = int(os.environ.get("BURST", "10"))
    model = os.environ.get("MODEL", CLOUD)
    max_tokens = int(os.environ.get("MAX_TOKENS", "8"))
    user = os.environ.get("USER_TAG", "")

    def one(i):
        c = OpenAI(base_url=urls[i % len(urls)], api_key=API_KEY, max_retries=0, timeout=60)
        started = time.monotonic()
        messages = [{"role": "user", "content": f"Say something short about the number {i:04d}."}]
        try:
            raw = c.chat.completions.with_raw_response.create(
                model=model, messages=messages, max_tokens=max_tokens, user=user)
            raw.parse()
            status, code, headers, retry_after = 200, None, raw.headers, None
        except openai.APIStatusError as e:
            body = e.body if isinstance(e.body, dict) else {}
            status, code, headers = e.status_code, body.get("code"), e.response.headers
            retry_after = headers.get("retry-after")
        out = {"status": status, "code": code, "retry_after": retry_after,
               "should_retry": headers.get("x-should-retry"), "seconds": time.monotonic() - started}
        out.update({h: headers.get(h) for h in ROUTING + RATE})
        return out

    with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
        return {"outcomes": list(pool.map(one, range(n)))}


def traced():
    """One streamed local request and one cloud request, each continuing a trace of the caller's: TRACE_LOCAL
    and TRACE_CLOUD are W3C traceparent values, sent as the `traceparent` header. PROMPT_WORD is put in both
    prompts, so that the test can check it never reaches a span."""
    c = client()
    word = os.environ["PROMPT_WORD"]
    messages = [{"role": "user", "content": f"Say one word about {word}."}]
    raw = c.chat.completions.with_raw_response.create(
        model=LOCAL, messages=messages, max_tokens=8, stream=True,
        extra_headers={"traceparent": os.environ["TRACE_LOCAL"]})
    text = "".join(ch.choices[0].delta.content or "" for ch in raw.parse() if ch.choices)
    local = {"headers": headers_of(raw), "text": text}
    cloud = plain(c, CLOUD, messages, max_tokens=8, extra_headers={"traceparent": os.environ["TRACE_CLOUD"]})
    return {"local": local, "cloud": cloud}


def replay():
    """A fixed sequence of requests, one at a time, that meets every kind of decision: cloud plain and
    streamed, contacts redacted, a card number kept local, the local model, a declared level, a virtual
    model with and without a hint, a codename rejected, an unknown model. The simulation test sends it to
    two gateways and compares their audit logs with what `sluice simulate` predicts."""
    c = client()
    v = redact_values()
    ask = lambda text: [{"role": "user", "content": text}]
    calls = [
        lambda: plain(c, CLOUD, ask("What is the capital of Japan?"), max_tokens=12),
        lambda: streamed(c, CLOUD, ask("Name three rivers."), True, max_tokens=20),
        lambda: plain(c, CLOUD, ask(f"Draft a reply to {v['email']}, phone {v['phone']}."), max_tokens=16),
        lambda: plain(c, CLOUD, ask(f"Is the card {v['card']} valid?"), max_tokens=4),
        lambda: plain(c, LOCAL, ask("Say hello."), max_tokens=4),
        lambda: streamed(c, LOCAL, ask("Count to three."), True, max_tokens=4),
        lambda: plain(c, CLOUD, ask("Summarise the meeting."), max_tokens=10,
                      extra_headers={"x-sluice-sensitivity": "confidential"}),
        lambda: plain(c, "auto", ask("What is two plus two?"), max_tokens=4),
        lambda: plain(c, "auto", ask("What is three plus three?"), max_tokens=4,
                      extra_headers={"x-sluice-prefer": "cloud"}),
        lambda: plain(c, CLOUD, ask("Status of project falcon?"), max_tokens=8),
        lambda: plain(c, "no-such-model", ask("Hello?"), max_tokens=8),
        lambda: plain(c, CLOUD, ask("A haiku about the sea, please."), max_tokens=24),
    ]
    out = []
    for call in calls:
        try:
            r = call()
            out.append({"status": 200, "route": r["headers"]["x-sluice-route"], "rule": r["headers"]["x-sluice-rule"]})
        except openai.APIStatusError as e:
            body = e.body if isinstance(e.body, dict) else {}
            out.append({"status": e.status_code, "code": body.get("code"),
                        "rule": e.response.headers.get("x-sluice-rule")})
    return {"outcomes": out}


EMBED_LOCAL = os.environ.get("EMBED_LOCAL", "all-minilm-l6-v2")
EMBED_CLOUD = os.environ.get("EMBED_CLOUD", "text-embedding-3-small")
# Public texts; and one with a card number (restricted whatever else the scan finds).
PUBLIC_TEXTS = ["The library opens at nine on weekdays.", "Quarterly revenue grew four percent."]
PATIENT = "Patient Anna Berg, born 12 May 1961, was diagnosed with type 2 diabetes."
CARD_TEXT = "Refund card 4111 1111 1111 1111 for the cancelled order."
# "hello world" in all-MiniLM-L6-v2's own vocabulary (BERT uncased), without [CLS] and [SEP].
HELLO_WORLD_IDS = [7592, 2088]


def embed(c, headers=None, **kw):
    raw = c.embeddings.with_raw_response.create(extra_headers=headers or {}, **kw)
    r = raw.parse()
    return {"headers": headers_of(raw), "model": r.model, "vectors": [d.embedding for d in r.data],
            "indices": [d.index for d in r.data], "usage": r.usage.model_dump()}


def embeddings():
    """Every input shape and encoding against the local and the cloud embedding model, a virtual
    embedding model whose members are the same model in both places, and the errors a client can meet."""
    c = client()
    prefer_cloud = {"x-sluice-prefer": "cloud"}
    # The local model is also hosted in the cloud: public text names where it should go.
    prefer_local = {"x-sluice-prefer": "local"}
    return {
        # The SDK asks for base64 unless told otherwise, and decodes it.
        "local_base64": embed(c, model=EMBED_LOCAL, input=PUBLIC_TEXTS, headers=prefer_local),
        "local_float": embed(c, model=EMBED_LOCAL, input=PUBLIC_TEXTS, encoding_format="float",
                             headers=prefer_local),
        "local_card": embed(c, model=EMBED_LOCAL, input=[CARD_TEXT, PUBLIC_TEXTS[0]], headers=prefer_cloud),
        "local_text": embed(c, model=EMBED_LOCAL, input="hello world", encoding_format="float",
                            headers=prefer_local),
        "local_ids": embed(c, model=EMBED_LOCAL, input=HELLO_WORLD_IDS, encoding_format="float"),
        "cloud_public": embed(c, model=EMBED_CLOUD, input=PUBLIC_TEXTS),
        "cloud_short": embed(c, model=EMBED_CLOUD, input=PUBLIC_TEXTS[1], dimensions=256, encoding_format="float"),
        "cloud_card": error_of(lambda: c.embeddings.create(model=EMBED_CLOUD, input=CARD_TEXT)),
        "cloud_ids": error_of(lambda: c.embeddings.create(model=EMBED_CLOUD, input=[[1, 2, 3]])),
        "virtual_public": embed(c, model="docs-embed", input=PUBLIC_TEXTS, headers=prefer_cloud),
        "virtual_card": embed(c, model="docs-embed", input=[PUBLIC_TEXTS[0], CARD_TEXT], headers=prefer_cloud),
        "chat_of_embedding_model": error_of(lambda: c.chat.completions.create(
            model=EMBED_LOCAL, messages=[{"role": "user", "content": "hi"}])),
        "embedding_of_chat_model": error_of(lambda: c.embeddings.create(model=CLOUD, input="hi")),
        "local_dimensions": error_of(lambda: c.embeddings.create(
            model=EMBED_LOCAL, input="hi", dimensions=100, extra_headers=prefer_local)),
        "too_long": error_of(lambda: c.embeddings.create(
            model=EMBED_LOCAL, input="word " * 300, extra_headers=prefer_local)),
        "empty": error_of(lambda: c.embeddings.create(model=EMBED_LOCAL, input="")),
    }


def response_of(raw):
    r = raw.parse()
    return {"headers": headers_of(raw), "id": r.id, "object": r.object, "status": r.status, "model": r.model,
            "text": r.output_text, "usage": r.usage.model_dump() if r.usage else None,
            "incomplete": r.incomplete_details.model_dump() if r.incomplete_details else None,
            "store": r.store, "output": [[o.type, o.role, [p.type for p in o.content]] for o in r.output]}


def streamed_response(c, **kw):
    raw = c.responses.with_raw_response.create(stream=True, **kw)
    types, sequence, deltas, final = [], [], [], None
    for event in raw.parse():
        types.append(event.type)
        sequence.append(event.sequence_number)
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        if event.type in ("response.completed", "response.incomplete"):
            final = event.response
    return {"headers": headers_of(raw), "types": types, "sequence": sequence, "text": "".join(deltas),
            "final_text": final.output_text if final else None, "status": final.status if final else None,
            "usage": final.usage.model_dump() if final and final.usage else None}


def responses():
    """The Responses API, stateless: local and cloud models, plain and streamed, instructions, a card number
    asked of the cloud model, and what a stateless gateway refuses."""
    c = client()
    card = " ".join(["4111"] + ["1111"] * 3)
    ask = "What is the capital of Japan?"
    create = c.responses.with_raw_response.create
    return {
        "local": response_of(create(model=LOCAL, input=ask, temperature=0, max_output_tokens=32)),
        "local_stream": streamed_response(c, model=LOCAL, input=ask, temperature=0, max_output_tokens=32),
        "local_chat": plain(c, LOCAL, JAPAN, temperature=0, max_tokens=32),
        "local_items": response_of(create(
            model=LOCAL, instructions="Answer in one word.", temperature=0, max_output_tokens=8,
            input=[{"role": "user", "content": [{"type": "input_text", "text": ask}]}])),
        "cloud": response_of(create(model=CLOUD, input="Hello", max_output_tokens=5)),
        "cloud_stream": streamed_response(c, model=CLOUD, input="Hello", max_output_tokens=5),
        "cloud_whole": response_of(create(model=CLOUD, input="Hello", store=False)),
        "card": response_of(create(model=CLOUD, input=f"Is {card} a number?", max_output_tokens=8)),
        "previous": error_of(lambda: c.responses.create(model=CLOUD, input="Go on", previous_response_id="resp_1")),
        "store": error_of(lambda: c.responses.create(model=CLOUD, input="Hi", store=True)),
        "tools": error_of(lambda: c.responses.create(model=CLOUD, input="Hi", tools=[
            {"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}])),
    }


def outage():
    """OUTAGE_COUNT requests for OUTAGE_MODEL (default the cloud model), one after another, each timed, with
    OUTAGE_HEADERS (JSON) as extra headers: where each went, whether a fallback served it, or its error."""
    c = client(timeout=30)
    model = os.environ.get("OUTAGE_MODEL", CLOUD)
    extra = json.loads(os.environ.get("OUTAGE_HEADERS", "{}"))
    results = []
    for _ in range(int(os.environ.get("OUTAGE_COUNT", "1"))):
        started = time.monotonic()
        try:
            raw = c.chat.completions.with_raw_response.create(
                model=model, messages=JAPAN, max_tokens=4, temperature=0, extra_headers=extra)
            r = raw.parse()
            h = raw.headers
            results.append({"status": 200, "route": h.get("x-sluice-route"), "backend": h.get("x-sluice-backend"),
                            "fallback": h.get("x-sluice-fallback"),
                            "substituted_for": h.get("x-sluice-substituted-for"), "model": r.model,
                            "decision_id": h.get("x-sluice-decision-id"),
                            "content": r.choices[0].message.content, "seconds": time.monotonic() - started})
        except openai.APIStatusError as e:
            body = e.body if isinstance(e.body, dict) else {}
            results.append({"status": e.status_code, "code": body.get("code"), "message": str(body.get("message")),
                            "fallback": e.response.headers.get("x-sluice-fallback"),
                            "seconds": time.monotonic() - started})
    return {"results": results}


SCENARIOS = {f.__name__: f for f in [outage, responses, embeddings, replay, traced, burst, basic, errors, tools, sensitive, policy, costs, disconnect, disconnect_cloud, killed, retry, local_once, up, hang, prose, redact, up_redact]}

if __name__ == "__main__":
    print(json.dumps(SCENARIOS[sys.argv[1]]()), flush=True)
