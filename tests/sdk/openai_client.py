"""Drives a running Tollgate gateway with the official `openai` Python SDK.

Run by the Rust integration test suite (with TOLLGATE_PYTHON pointing at a
venv that has the SDK, see tests/run.sh); also usable by hand:

    TOLLGATE_BASE_URL=http://127.0.0.1:8080/v1 TOLLGATE_KEY=demo-key-123 \
        target/sdk-venv/bin/python tests/sdk/openai_client.py

The gateway must serve a chat alias `fast` and an embeddings alias `embed`,
and must not know a model called `no-such-model`. The answers are checked
exactly against what the test upstream of tests/sdk.rs sends (override with
TOLLGATE_EXPECT_CHAT, TOLLGATE_EXPECT_STREAM and TOLLGATE_EXPECT_USAGE, e.g.
for the demo's mock provider).

For an https:// base URL, TOLLGATE_CA_FILE names a PEM file of the CA to
trust (only that CA); TOLLGATE_CHECKS=chat,stream runs a subset of checks.

Prints one line per check, then `N passed, M failed`; exits 1 if any failed.
"""

import os
import sys
import traceback

from openai import AuthenticationError, NotFoundError, OpenAI

BASE_URL = os.environ.get("TOLLGATE_BASE_URL", "http://127.0.0.1:8080/v1")
KEY = os.environ.get("TOLLGATE_KEY", "")
CA_FILE = os.environ.get("TOLLGATE_CA_FILE")
ONLY = [c for c in os.environ.get("TOLLGATE_CHECKS", "").split(",") if c]
TIMEOUT = 20.0
MESSAGES = [{"role": "user", "content": "hi"}]
# What tests/sdk.rs's upstream answers.
EXPECT_CHAT = os.environ.get("TOLLGATE_EXPECT_CHAT", "hello from upstream")
EXPECT_STREAM = os.environ.get("TOLLGATE_EXPECT_STREAM", "tok0tok1tok2tok3")
EXPECT_USAGE = tuple(
    int(x) for x in os.environ.get("TOLLGATE_EXPECT_USAGE", "3,3,6").split(",")
)
EXPECT_EMBEDDING = [0.1, -0.2, 0.3]


def make_client(api_key):
    http_client = None
    if CA_FILE:
        import ssl

        import openai

        ctx = ssl.create_default_context(cafile=CA_FILE)
        http_client = openai.DefaultHttpxClient(verify=ctx, timeout=TIMEOUT)
    return OpenAI(
        base_url=BASE_URL,
        api_key=api_key,
        max_retries=0,
        timeout=TIMEOUT,
        http_client=http_client,
    )


def error_field(exc, name):
    """Field `name` of the OpenAI error object of an APIStatusError,
    whatever the SDK version keeps in `body`."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        if isinstance(body.get("error"), dict):
            body = body["error"]
        return body.get(name)
    return None


def error_code(exc):
    """The OpenAI error `code` of an APIStatusError, whatever the SDK version."""
    return getattr(exc, "code", None) or error_field(exc, "code")


def check_chat(client):
    resp = client.chat.completions.create(model="fast", messages=MESSAGES)
    assert len(resp.choices) == 1, f"{len(resp.choices)} choices"
    content = resp.choices[0].message.content
    assert content == EXPECT_CHAT, f"content {content!r}, want {EXPECT_CHAT!r}"
    assert resp.choices[0].finish_reason == "stop", resp.choices[0].finish_reason
    u = resp.usage
    got = (u.prompt_tokens, u.completion_tokens, u.total_tokens)
    assert got == EXPECT_USAGE, f"usage {got}, want {EXPECT_USAGE}"
    return f"{content!r}, usage {got}"


def check_stream(client):
    stream = client.chat.completions.create(model="fast", messages=MESSAGES, stream=True)
    parts = []
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta is not None and choice.delta.content:
                parts.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    # Reaching this point means the iterator ended cleanly without raising.
    text = "".join(parts)
    assert text == EXPECT_STREAM, f"streamed {text!r}, want {EXPECT_STREAM!r}"
    assert finish == "stop", f"finish_reason {finish!r}"
    # The raw stream ends with `data: [DONE]` (the SDK hides it).
    with client.chat.completions.with_streaming_response.create(
        model="fast", messages=MESSAGES, stream=True
    ) as raw:
        assert raw.headers.get("content-type", "").startswith("text/event-stream"), raw.headers
        data = [line for line in raw.iter_lines() if line.startswith("data:")]
    assert data and data[-1] == "data: [DONE]", f"last event {data[-1:]!r}"
    assert "data: [DONE]" not in data[:-1], "[DONE] before the end"
    return f"{len(parts)} content chunks, {text!r}, then [DONE]"


def check_embeddings(client):
    resp = client.embeddings.create(model="embed", input=["a", "b"])
    assert len(resp.data) == 2, f"{len(resp.data)} embeddings, want 2"
    for i, item in enumerate(resp.data):
        assert item.index == i, f"index {item.index}, want {i}"
        emb = item.embedding
        assert len(emb) == len(EXPECT_EMBEDDING) and all(
            abs(a - b) < 1e-6 for a, b in zip(emb, EXPECT_EMBEDDING)
        ), f"embedding {i}: {emb}"
    return f"2 x {len(resp.data[0].embedding)} dims"


def check_not_found(client):
    try:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    except NotFoundError as e:
        assert e.status_code == 404, f"status {e.status_code}"
        code = error_code(e)
        assert code == "model_not_found", f"code={code!r} body={e.body!r}"
        return "404 model_not_found"
    raise AssertionError("no NotFoundError raised")


def check_bad_key(_client):
    bad = make_client("wrong")
    try:
        bad.chat.completions.create(model="fast", messages=MESSAGES)
    except AuthenticationError as e:
        assert e.status_code == 401, f"status {e.status_code}"
        code = error_code(e)
        assert code == "invalid_api_key", f"code={code!r} body={e.body!r}"
        kind = error_field(e, "type")
        assert kind == "authentication_error", f"type={kind!r} body={e.body!r}"
        return "401 invalid_api_key"
    raise AssertionError("no AuthenticationError raised")


def check_models(client):
    ids = sorted(m.id for m in client.models.list())
    assert ids == ["embed", "fast"], f"models {ids}"
    return f"{len(ids)} models"


CHECKS = [
    ("chat", check_chat),
    ("stream", check_stream),
    ("embeddings", check_embeddings),
    ("not_found", check_not_found),
    ("bad_key", check_bad_key),
    ("models", check_models),
]


def main():
    import openai

    print(f"openai {openai.__version__} -> {BASE_URL}", flush=True)
    client = make_client(KEY)
    passed = failed = 0
    for name, fn in CHECKS:
        if ONLY and name not in ONLY:
            continue
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
