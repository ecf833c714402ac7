"""The official `openai` Python SDK against a chat alias served by an
Anthropic provider (kind: anthropic) through Tollgate: streamed tool calls.

Run by tests/sdk.rs with TOLLGATE_PYTHON (see tests/run.sh). The gateway must
serve the alias `claude`, whose provider answers with the tool-call fixture
(tests/fixtures/anthropic/stream_tools.sse and message_tools.json).

Prints one line per check, then `N passed, M failed`; exits 1 if any failed.
"""

import json
import os
import sys
import traceback

from openai import OpenAI

BASE_URL = os.environ["TOLLGATE_BASE_URL"]
KEY = os.environ["TOLLGATE_KEY"]
MESSAGES = [{"role": "user", "content": "Weather in SF, and the time in Paris?"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
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
    ("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather", {"location": "San Francisco, CA", "unit": "celsius"}),
    ("toolu_01B7xk2m3n4p5q6r7s8t9u0v", "get_time", {"tz": "Europe/Paris"}),
]

client = OpenAI(base_url=BASE_URL, api_key=KEY, max_retries=0, timeout=20.0)


def check_calls(calls):
    got = [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls]
    assert got == WANT, got


def stream_helper_assembles_tool_calls():
    with client.chat.completions.stream(
        model="claude",
        messages=MESSAGES,
        tools=TOOLS,
        max_tokens=200,
        stream_options={"include_usage": True},
    ) as stream:
        done_args = []
        for event in stream:
            if event.type == "tool_calls.function.arguments.done":
                done_args.append((event.index, event.name, json.loads(event.arguments)))
        final = stream.get_final_completion()
    assert done_args == [(0, "get_weather", WANT[0][2]), (1, "get_time", WANT[1][2])], done_args
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls", choice.finish_reason
    assert choice.message.content == "Checking both cities.", choice.message.content
    check_calls(choice.message.tool_calls)
    assert final.usage is not None and final.usage.prompt_tokens == 472, final.usage
    assert final.usage.completion_tokens == 89, final.usage


def raw_stream_chunks_accumulate():
    args, ids = {}, {}
    stream = client.chat.completions.create(
        model="claude", messages=MESSAGES, tools=TOOLS, max_tokens=200, stream=True
    )
    first = True
    for chunk in stream:
        assert chunk.usage is None, "no usage chunk unless asked"
        delta = chunk.choices[0].delta
        if first:
            assert delta.role == "assistant", delta
            first = False
        for tc in delta.tool_calls or []:
            if tc.id:
                ids[tc.index] = (tc.id, tc.function.name)
            args[tc.index] = args.get(tc.index, "") + (tc.function.arguments or "")
    got = [(ids[i][0], ids[i][1], json.loads(args[i])) for i in sorted(args)]
    assert got == WANT, got


def non_stream_tool_calls():
    r = client.chat.completions.create(model="claude", messages=MESSAGES, tools=TOOLS, max_tokens=200)
    calls = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls"
    assert [json.loads(c.function.arguments)["location"] for c in calls] == ["San Francisco, CA", "Paris, France"]


CHECKS = [stream_helper_assembles_tool_calls, raw_stream_chunks_accumulate, non_stream_tool_calls]

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
