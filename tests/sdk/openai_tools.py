"""The official `openai` Python SDK streaming tool calls from an alias served
by a translated provider (kind: anthropic, bedrock or vertex) through
Tollgate, then the same non-stream.

Run by tests/sdk.rs and tests/cloud_providers.rs (support::sdk::
run_tools_script) with TOLLGATE_PYTHON (see tests/run.sh).
The alias is TOLLGATE_MODEL; TOLLGATE_WANT is a JSON object saying what its
provider's fixtures hold:

  {"stream": {"content": str, "calls": [[id, name, args]], "usage": [prompt, completion]},
   "whole": {"calls": [[id, name, args]]}}

Prints one line per check, then `N passed, M failed`; exits 1 if any failed.
"""

import json
import os
import sys
import traceback

from openai import OpenAI

BASE_URL = os.environ["TOLLGATE_BASE_URL"]
KEY = os.environ["TOLLGATE_KEY"]
MODEL = os.environ["TOLLGATE_MODEL"]
WANT = json.loads(os.environ["TOLLGATE_WANT"])
MESSAGES = [{"role": "user", "content": "What is the weather like?"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
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

client = OpenAI(base_url=BASE_URL, api_key=KEY, max_retries=0, timeout=20.0)


def want_calls(section):
    return [(i, n, a) for i, n, a in WANT[section]["calls"]]


def got_calls(calls):
    return [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls]


def stream_helper_assembles_tool_calls():
    want = WANT["stream"]
    with client.chat.completions.stream(
        model=MODEL,
        messages=MESSAGES,
        tools=TOOLS,
        max_tokens=200,
        stream_options={"include_usage": True},
    ) as stream:
        done = []
        for event in stream:
            if event.type == "tool_calls.function.arguments.done":
                done.append((event.name, json.loads(event.arguments)))
        final = stream.get_final_completion()
    assert done == [(n, a) for _, n, a in want_calls("stream")], done
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls", choice.finish_reason
    assert choice.message.content == want["content"], choice.message.content
    assert got_calls(choice.message.tool_calls) == want_calls("stream"), choice.message.tool_calls
    assert final.usage is not None, "usage chunk asked for"
    assert [final.usage.prompt_tokens, final.usage.completion_tokens] == want["usage"], final.usage


def raw_stream_chunks_accumulate():
    args, ids = {}, {}
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=200, stream=True
    )
    first = True
    finish = None
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
        finish = chunk.choices[0].finish_reason or finish
    got = [(ids[i][0], ids[i][1], json.loads(args[i])) for i in sorted(args)]
    assert got == want_calls("stream"), got
    assert finish == "tool_calls", finish


def non_stream_tool_calls():
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=200)
    assert r.choices[0].finish_reason == "tool_calls", r.choices[0].finish_reason
    assert got_calls(r.choices[0].message.tool_calls) == want_calls("whole"), r.choices[0].message


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
