"""Drives a running Tollgate gateway's /v1/messages with the official
`anthropic` Python SDK, the upstream being an OpenAI-kind provider.

Run by the Rust integration test tests/sdk_anthropic.rs (with
TOLLGATE_PYTHON pointing at a venv that has the SDK, see tests/run.sh);
also usable by hand:

    TOLLGATE_BASE_URL=http://127.0.0.1:8080 TOLLGATE_KEY=demo-key-123 \
        target/sdk-venv/bin/python tests/sdk/anthropic_client.py

The gateway must serve the alias TOLLGATE_MODEL (default `claude-sonnet-4-5`)
from an upstream that streams text then a `get_weather` tool call whose
arguments are {"location": "Paris, France", "unit": "celsius"} (the
fixture tests/fixtures/messages/stream_tools.openai.sse, or its Anthropic
translation), answer non-stream requests with the two tool calls of
response_tools.openai.json, and must not know a model called
`no-such-model`. Text, tool inputs and usage are checked exactly against
those fixtures.

Prints one line per check, then `N passed, M failed`; exits 1 if any failed.
"""

import os
import sys
import traceback

import anthropic
from anthropic import Anthropic, AuthenticationError, NotFoundError

BASE_URL = os.environ.get("TOLLGATE_BASE_URL", "http://127.0.0.1:8080")
KEY = os.environ.get("TOLLGATE_KEY", "")
MODEL = os.environ.get("TOLLGATE_MODEL", "claude-sonnet-4-5")
TIMEOUT = 20.0
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOLS = [
    {
        "name": "get_weather",
        "description": "Get the current weather in a given location",
        "input_schema": {
            "type": "object",
            "properties": {
                "location": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location"],
        },
    }
]


# What the fixtures hold: the streamed text, and the usage (2082 prompt
# tokens of which 1920 cached, 46 out) in Anthropic's terms.
EXPECT_TEXT = "Let me check both."
EXPECT_USAGE = {"input_tokens": 162, "cache_read_input_tokens": 1920, "output_tokens": 46}


def usage_of(u):
    return {k: getattr(u, k) for k in EXPECT_USAGE}


def error_type(exc):
    body = exc.body if isinstance(exc.body, dict) else {}
    return body.get("error", {}).get("type")


def make_client(api_key):
    return Anthropic(base_url=BASE_URL, api_key=api_key, max_retries=0, timeout=TIMEOUT)


def check_stream(client):
    texts = []
    events = set()
    with client.messages.stream(
        model=MODEL, max_tokens=256, messages=MESSAGES, tools=TOOLS
    ) as stream:
        for event in stream:
            events.add(event.type)
            if event.type == "text":
                texts.append(event.text)
        final = stream.get_final_message()
    for want in ("message_start", "content_block_start", "content_block_stop", "message_stop"):
        assert want in events, f"no {want} event in {sorted(events)}"
    assert final.model == MODEL, f"model {final.model!r}"
    assert final.stop_reason == "tool_use", f"stop_reason {final.stop_reason!r}"
    kinds = [b.type for b in final.content]
    assert kinds[0] == "text" and "tool_use" in kinds, f"blocks {kinds}"
    assert kinds == ["text", "tool_use", "tool_use"], f"blocks {kinds}"
    text = final.content[0].text
    assert text == EXPECT_TEXT, f"text {text!r}"
    assert "".join(texts) == EXPECT_TEXT, f"streamed {texts!r}"
    tools = [b for b in final.content if b.type == "tool_use"]
    weather, clock = tools
    assert weather.name == "get_weather", weather.name
    assert weather.id, "tool_use without id"
    assert weather.input == {"location": "Paris, France", "unit": "celsius"}, weather.input
    assert clock.name == "get_time", clock.name
    assert clock.input == {"timezone": "Europe/Paris"}, clock.input
    u = final.usage
    assert usage_of(u) == EXPECT_USAGE, f"usage {u}"
    return (
        f"{len(texts)} text deltas, blocks {kinds}, input {weather.input}, "
        f"usage in={u.input_tokens} cached={u.cache_read_input_tokens} out={u.output_tokens}"
    )


def check_create(client):
    msg = client.messages.create(model=MODEL, max_tokens=256, messages=MESSAGES, tools=TOOLS)
    assert msg.type == "message" and msg.role == "assistant", msg
    assert msg.model == MODEL, f"model {msg.model!r}"
    assert msg.stop_reason == "tool_use", f"stop_reason {msg.stop_reason!r}"
    calls = [(b.type, b.name, b.input) for b in msg.content]
    assert calls == [
        ("tool_use", "get_weather", {"location": "Boston, MA"}),
        ("tool_use", "get_time", {"timezone": "America/New_York"}),
    ], f"content {calls}"
    assert usage_of(msg.usage) == EXPECT_USAGE, f"usage {msg.usage}"
    return f"{[b.type for b in msg.content]}, stop_reason {msg.stop_reason}"


def check_not_found(client):
    try:
        client.messages.create(model="no-such-model", max_tokens=16, messages=MESSAGES)
    except NotFoundError as e:
        assert e.status_code == 404, f"status {e.status_code}"
        assert error_type(e) == "not_found_error", f"body {e.body!r}"
        return "404 not_found_error"
    raise AssertionError("no NotFoundError raised")


def check_bad_key(_client):
    try:
        make_client("wrong").messages.create(model=MODEL, max_tokens=16, messages=MESSAGES)
    except AuthenticationError as e:
        assert e.status_code == 401, f"status {e.status_code}"
        assert error_type(e) == "authentication_error", f"body {e.body!r}"
        return "401 authentication_error"
    raise AssertionError("no AuthenticationError raised")


CHECKS = [
    ("stream", check_stream),
    ("create", check_create),
    ("not_found", check_not_found),
    ("bad_key", check_bad_key),
]


def main():
    print(f"anthropic {anthropic.__version__} -> {BASE_URL}", flush=True)
    client = make_client(KEY)
    passed = failed = 0
    for name, fn in CHECKS:
        try:
            detail = fn(client)
        except Exception as e:  # noqa: BLE001 - report every failure and go on
            failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc(file=sys.stdout)
        else:
            passed += 1
            print(f"ok   {name}: {detail}", flush=True)
    print(f"{passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
