"""Drives a running Tollgate gateway with the official `openai` Python SDK.

Run by the Rust integration test suite (with TOLLGATE_PYTHON pointing at a
venv that has the SDK, see tests/run.sh); also usable by hand:

    TOLLGATE_BASE_URL=http://127.0.0.1:8080/v1 TOLLGATE_KEY=demo-key-123 \
        target/sdk-venv/bin/python tests/sdk/openai_client.py

The gateway must serve a chat alias `fast` and an embeddings alias `embed`,
and must not know a model called `no-such-model`.

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


def error_code(exc):
    """The OpenAI error `code` of an APIStatusError, whatever the SDK version."""
    code = getattr(exc, "code", None)
    if code:
        return code
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        if isinstance(body.get("error"), dict):
            body = body["error"]
        return body.get("code")
    return None


def check_chat(client):
    resp = client.chat.completions.create(model="fast", messages=MESSAGES)
    assert resp.choices, "no choices"
    content = resp.choices[0].message.content
    assert isinstance(content, str) and content, f"empty content: {content!r}"
    assert resp.usage is not None, "no usage"
    assert resp.usage.total_tokens > 0, f"total_tokens={resp.usage.total_tokens}"
    return f"{len(content)} chars, {resp.usage.total_tokens} tokens"


def check_stream(client):
    stream = client.chat.completions.create(model="fast", messages=MESSAGES, stream=True)
    parts = []
    chunks = 0
    for chunk in stream:
        chunks += 1
        for choice in chunk.choices:
            if choice.delta is not None and choice.delta.content:
                parts.append(choice.delta.content)
    # Reaching this point means the iterator ended cleanly (on [DONE] or EOF)
    # without raising.
    assert len(parts) >= 2, f"only {len(parts)} content chunks of {chunks}"
    text = "".join(parts)
    assert text, "joined content is empty"
    return f"{chunks} chunks, {len(parts)} with content, {len(text)} chars"


def check_embeddings(client):
    resp = client.embeddings.create(model="embed", input=["a", "b"])
    assert len(resp.data) == 2, f"{len(resp.data)} embeddings, want 2"
    for item in resp.data:
        emb = item.embedding
        assert isinstance(emb, list) and emb, f"embedding {item.index} is empty"
        assert all(isinstance(x, float) for x in emb), f"embedding {item.index} not floats"
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
        return f"401 {error_code(e)}"
    raise AssertionError("no AuthenticationError raised")


def check_models(client):
    ids = {m.id for m in client.models.list()}
    missing = {"fast", "embed"} - ids
    assert not missing, f"missing {sorted(missing)} in {sorted(ids)}"
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
