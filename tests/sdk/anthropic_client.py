"""Drives a running Sluice gateway with the official Anthropic Python SDK (and the OpenAI SDK for the clouds
that speak other wire formats), one scenario per run.

Usage: anthropic_client.py SCENARIO, with SLUICE_BASE_URL (the gateway's root, no /v1) and SLUICE_API_KEY
in the environment (and LOCAL_MODEL). The last line of standard output is a JSON object with what the
scenario observed; tests/messages.rs asserts on it.
"""

import json
import os
import sys

import urllib.error
import urllib.request

import anthropic
import openai

ROOT = os.environ["SLUICE_BASE_URL"].rstrip("/").removesuffix("/v1")
API_KEY = os.environ["SLUICE_API_KEY"]
LOCAL = os.environ.get("LOCAL_MODEL", "smollm2-135m-instruct")
JAPAN = [{"role": "user", "content": "What is the capital of Japan?"}]
ROUTING = ["x-sluice-route", "x-sluice-backend", "x-sluice-rule", "x-sluice-sensitivity",
           "x-sluice-decision-id", "x-request-id", "x-sluice-model", "x-sluice-substituted-for", "request-id"]
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
CARD = " ".join(["4111"] + ["1111"] * 3)


def client(**kw):
    # No SDK retries: every retry the tests see must be the gateway's.
    return anthropic.Anthropic(base_url=ROOT, api_key=API_KEY, max_retries=0, **kw)


def headers_of(raw):
    return {h: raw.headers.get(h) for h in ROUTING}


def block(b):
    if b.type == "text":
        return {"type": "text", "text": b.text}
    if b.type == "tool_use":
        return {"type": "tool_use", "id": b.id, "name": b.name, "input": b.input}
    return {"type": b.type}


def message_of(raw):
    m = raw.parse()
    return {"headers": headers_of(raw), "id": m.id, "type": m.type, "role": m.role, "model": m.model,
            "content": [block(b) for b in m.content], "stop_reason": m.stop_reason, "stop_sequence": m.stop_sequence,
            "usage": {"input_tokens": m.usage.input_tokens, "output_tokens": m.usage.output_tokens}}


def create(c, **kw):
    return message_of(c.messages.with_raw_response.create(**kw))


def streamed(c, **kw):
    """The raw events, then what the SDK's own accumulation made of them."""
    types, text, json_parts = [], "", []
    with c.messages.stream(**kw) as s:
        for event in s:
            if event.type in ("text", "input_json"):
                continue  # the SDK's own derived events
            types.append(event.type)
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                text += event.delta.text
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                json_parts.append(event.delta.partial_json)
        final = s.get_final_message()
        headers = {h: s.response.headers.get(h) for h in ROUTING}
    return {"headers": headers, "types": types, "text": text, "json_parts": json_parts,
            "final": {"content": [block(b) for b in final.content], "stop_reason": final.stop_reason,
                      "model": final.model,
                      "usage": {"input_tokens": final.usage.input_tokens,
                                "output_tokens": final.usage.output_tokens}}}


def error_of(call):
    try:
        call()
    except anthropic.APIStatusError as e:
        body = e.body if isinstance(e.body, dict) else {}
        return {"status": e.status_code, "class": type(e).__name__, "body": body,
                "message": (body.get("error") or {}).get("message")}
    except openai.APIStatusError as e:
        body = e.body if isinstance(e.body, dict) else {}
        return {"status": e.status_code, "class": type(e).__name__, "code": body.get("code"),
                "message": body.get("message")}
    return {"status": 200}


def messages():
    """The Messages API against the local model, an OpenAI-compatible cloud and an Anthropic cloud, plain
    and streamed, with tools and tool results, a card number asked of the Anthropic model, the errors a
    client meets, and the model list."""
    c = client()
    ask = "What is the capital of Japan?"
    tool_turns = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                           "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "4 C, rain"}]},
    ]
    out = {
        "local": create(c, model=LOCAL, max_tokens=32, extra_body={"temperature": 0}, messages=JAPAN),
        "local_stream": streamed(c, model=LOCAL, max_tokens=32, extra_body={"temperature": 0}, messages=JAPAN),
        "local_system": create(c, model=LOCAL, max_tokens=8, extra_body={"temperature": 0}, system="Answer in one word.",
                               messages=[{"role": "user", "content": [{"type": "text", "text": ask}]}]),
        "openai_cloud": create(c, model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "Hello"}]),
        "openai_cloud_stream": streamed(c, model="gpt-4o-mini", max_tokens=5,
                                        messages=[{"role": "user", "content": "Hello"}]),
        "openai_cloud_tool": create(c, model="gpt-4o-mini", max_tokens=50, tools=[WEATHER],
                                    messages=[{"role": "user", "content": "Weather in Oslo?"}]),
        "claude": create(c, model="claude-sonnet-4-5", max_tokens=5, system="Be brief.",
                         messages=[{"role": "user", "content": "Hello"}], stop_sequences=["zzz"]),
        "claude_whole": create(c, model="claude-sonnet-4-5", max_tokens=64,
                               messages=[{"role": "user", "content": "Hello"}]),
        "claude_stream": streamed(c, model="claude-sonnet-4-5", max_tokens=5,
                                  messages=[{"role": "user", "content": "Hello"}]),
        "claude_tool": create(c, model="claude-sonnet-4-5", max_tokens=50, tools=[WEATHER],
                              tool_choice={"type": "any"}, messages=[{"role": "user", "content": "Weather in Oslo?"}]),
        "claude_tool_stream": streamed(c, model="claude-sonnet-4-5", max_tokens=50, tools=[WEATHER],
                                       messages=[{"role": "user", "content": "Weather in Oslo?"}]),
        "claude_tool_result": create(c, model="claude-sonnet-4-5", max_tokens=5, tools=[WEATHER],
                                     messages=tool_turns),
        "claude_cached": create(c, model="claude-sonnet-4-5", max_tokens=64, stop_sequences=["simulated"],
                                system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
                                messages=[{"role": "user", "content": "Hello"}]),
        "card": create(c, model="claude-sonnet-4-5", max_tokens=8,
                       messages=[{"role": "user", "content": f"Is {CARD} a valid number?"}]),
        "models": [{"id": m.id, "display_name": m.display_name} for m in c.models.list()],
        "top_k": error_of(lambda: c.messages.create(model=LOCAL, max_tokens=5, extra_body={"top_k": 3}, messages=JAPAN)),
        "unknown_model": error_of(lambda: c.messages.create(model="no-such-model", max_tokens=5, messages=JAPAN)),
        "bad_key": error_of(lambda: anthropic.Anthropic(base_url=ROOT, api_key="sk-wrong", max_retries=0)
                            .messages.create(model=LOCAL, max_tokens=5, messages=JAPAN)),
        "local_tool": error_of(lambda: c.messages.create(model=LOCAL, max_tokens=5, tools=[WEATHER], messages=JAPAN)),
    }
    # Without the anthropic-version header (which the SDK always sends): Anthropic's answer to that.
    request = urllib.request.Request(
        f"{ROOT}/v1/messages", method="POST",
        data=json.dumps({"model": LOCAL, "max_tokens": 5, "messages": JAPAN}).encode(),
        headers={"x-api-key": API_KEY, "content-type": "application/json"})
    try:
        urllib.request.urlopen(request, timeout=30)
        out["no_version"] = {"status": 200}
    except urllib.error.HTTPError as e:
        out["no_version"] = {"status": e.code, "body": json.loads(e.read())}
    return out


def clouds():
    """Chat completions and embeddings through the OpenAI SDK to an Azure OpenAI deployment and to
    Anthropic's API: each cloud's own wire format upstream, OpenAI's shapes back."""
    c = openai.OpenAI(base_url=f"{ROOT}/v1", api_key=API_KEY, max_retries=0)

    def chat(model, **kw):
        raw = c.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "Hello"}], **kw)
        r = raw.parse()
        return {"headers": {h: raw.headers.get(h) for h in ROUTING}, "model": r.model,
                "content": r.choices[0].message.content, "finish_reason": r.choices[0].finish_reason,
                "tool_calls": [t.model_dump() for t in (r.choices[0].message.tool_calls or [])],
                "usage": r.usage.model_dump()}

    def chat_stream(model, **kw):
        text, finish, usage = "", None, None
        for chunk in c.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello"}],
                                               stream=True, stream_options={"include_usage": True}, **kw):
            for ch in chunk.choices:
                text += ch.delta.content or ""
                finish = ch.finish_reason or finish
            if chunk.usage:
                usage = chunk.usage.model_dump()
        return {"content": text, "finish_reason": finish, "usage": usage}

    tools = [{"type": "function", "function": {"name": WEATHER["name"], "parameters": WEATHER["input_schema"]}}]
    emb = c.embeddings.create(model="embed-azure", input=["one", "two"], encoding_format="float")
    return {
        "azure": chat("gpt-4o-mini-azure", max_tokens=5),
        "azure_stream": chat_stream("gpt-4o-mini-azure", max_tokens=5),
        "azure_embeddings": {"model": emb.model, "dims": [len(d.embedding) for d in emb.data],
                             "usage": emb.usage.model_dump()},
        "claude": chat("claude-sonnet-4-5", max_tokens=5),
        "claude_stream": chat_stream("claude-sonnet-4-5", max_tokens=5),
        "claude_tool": chat("claude-sonnet-4-5", max_tokens=50, tools=tools),
        "claude_seed": error_of(lambda: c.chat.completions.create(
            model="claude-sonnet-4-5", seed=7, messages=[{"role": "user", "content": "Hi"}])),
    }


SCENARIOS = {f.__name__: f for f in [messages, clouds]}

if __name__ == "__main__":
    print(json.dumps(SCENARIOS[sys.argv[1]]()), flush=True)
