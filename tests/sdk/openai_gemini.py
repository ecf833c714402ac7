"""The official `openai` Python SDK against aliases served by a Gemini
provider (kind: gemini) through Tollgate: streamed parallel tool calls, and
embeddings in the SDK's default base64 encoding.

Run by tests/sdk.rs with TOLLGATE_PYTHON (see tests/run.sh). The gateway must
serve the aliases `gem` (chat; the provider answers with
tests/fixtures/gemini/stream_tools.sse and generate_tools.json) and
`gem-embed` (embeddings; embed_single.json and embed_batch.json).

Prints one line per check, then `N passed, M failed`; exits 1 if any failed.
"""

import json
import os
import sys
import traceback

from openai import OpenAI

BASE_URL = os.environ["TOLLGATE_BASE_URL"]
KEY = os.environ["TOLLGATE_KEY"]
MESSAGES = [{"role": "user", "content": "Weather in Paris and Zürich, and the time in Paris?"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                "required": ["city"],
                "additionalProperties": False,
            },
            "strict": True,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}},
        },
    },
]
WANT = [
    ("get_weather", {"city": "Paris", "unit": "celsius"}),
    ("get_weather", {"city": "Zürich", "unit": "celsius"}),
    ("get_time", {"tz": "Europe/Paris"}),
]

client = OpenAI(base_url=BASE_URL, api_key=KEY, max_retries=0, timeout=20.0)


def stream_helper_assembles_parallel_tool_calls():
    with client.chat.completions.stream(
        model="gem",
        messages=MESSAGES,
        tools=TOOLS,
        stream_options={"include_usage": True},
    ) as stream:
        done = []
        for event in stream:
            if event.type == "tool_calls.function.arguments.done":
                done.append((event.index, event.name, json.loads(event.arguments)))
        final = stream.get_final_completion()
    assert done == [(i, n, a) for i, (n, a) in enumerate(WANT)], done
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls", choice.finish_reason
    assert choice.message.content == "Let me check both cities.", choice.message.content
    got = [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls]
    assert got == WANT, got
    assert len({c.id for c in choice.message.tool_calls}) == 3
    assert final.usage is not None and final.usage.prompt_tokens == 130, final.usage
    assert final.usage.completion_tokens == 73, final.usage
    assert final.usage.prompt_tokens_details.cached_tokens == 64, final.usage
    assert final.usage.completion_tokens_details.reasoning_tokens == 32, final.usage


def non_stream_tool_calls():
    r = client.chat.completions.create(model="gem", messages=MESSAGES, tools=TOOLS, tool_choice="required")
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice.finish_reason
    got = [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls]
    assert got == WANT[:2], got


def embeddings_in_the_sdk_default_encoding():
    # The SDK asks for base64 and decodes it to floats.
    r = client.embeddings.create(model="gem-embed", input=["a", "b"])
    assert [d.embedding for d in r.data] == [[0.5, -0.25, 0.125], [1.0, 0.0, -1.0]], r.data
    assert r.usage.prompt_tokens > 0, r.usage
    one = client.embeddings.create(model="gem-embed", input="hello")
    assert len(one.data) == 1 and abs(one.data[0].embedding[0] - 0.013168523) < 1e-7, one.data


def unsupported_field_raises_bad_request():
    try:
        client.chat.completions.create(model="gem", messages=MESSAGES, logit_bias={"50256": -100})
    except Exception as e:  # noqa: BLE001
        assert type(e).__name__ == "BadRequestError", type(e).__name__
        assert e.body["param"] == "logit_bias", e.body
        return
    raise AssertionError("expected BadRequestError")


CHECKS = [
    stream_helper_assembles_parallel_tool_calls,
    non_stream_tool_calls,
    embeddings_in_the_sdk_default_encoding,
    unsupported_field_raises_bad_request,
]

passed = failed = 0
for check in CHECKS:
    try:
        check()
        print(f"PASS {check.__name__}")
        passed += 1
    except Exception as e:  # noqa: BLE001
        print(f"FAIL {check.__name__}: {type(e).__name__}: {e}")
        traceback.print_exc()
        failed += 1
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
