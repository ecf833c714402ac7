"""The official `openai` Python SDK's moderations, images, speech,
transcription and image-edit calls through a running Tollgate gateway (run
by tests/surface.rs), and its Files and Batches calls (run by
tests/files_batches.rs with TOLLGATE_CHECKS=files).

The gateway must serve `mod` (moderations), `img` (images and image
edits), `tts` (speech) and `stt` (transcriptions). TOLLGATE_EXPECT_AUDIO_HEX is the audio the upstream sends, as hex:
the SDK must receive exactly those bytes.

For `files`: TOLLGATE_KEY's team owns no file or batch yet, and
TOLLGATE_OTHER_KEY is a key of another team (whose objects must stay out
of this team's lists, and which must get 404 for this team's).

Prints one line per check, then `N passed, M failed`; exits 1 if any failed.
"""

import os
import sys
import traceback

import openai
from openai import OpenAI

BASE_URL = os.environ.get("TOLLGATE_BASE_URL", "http://127.0.0.1:8080/v1")
KEY = os.environ.get("TOLLGATE_KEY", "")
AUDIO = bytes.fromhex(os.environ.get("TOLLGATE_EXPECT_AUDIO_HEX", ""))

client = OpenAI(base_url=BASE_URL, api_key=KEY, max_retries=0, timeout=20.0)


def moderation():
    r = client.moderations.create(model="mod", input="hello")
    assert len(r.results) == 1, r
    assert r.results[0].flagged is False, r


def image():
    r = client.images.generate(model="img", prompt="a lighthouse", n=2)
    assert len(r.data) == 2, r
    assert r.data[0].url == "https://img.example/1.png", r


def speech():
    r = client.audio.speech.create(model="tts", voice="alloy", input="Hello there")
    got = r.read()
    assert got == AUDIO, (got, AUDIO)


def wav(seconds=1, rate=8000):
    """A small silent WAV, made here (16-bit mono PCM)."""
    import io
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x00" * rate * seconds)
    return buf.getvalue()


def transcription():
    r = client.audio.transcriptions.create(
        file=("hello.wav", wav(), "audio/wav"), model="stt"
    )
    assert r.text == "hello there", r


def image_edit():
    png = bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
    r = client.images.edit(
        model="img", image=("in.png", png, "image/png"), prompt="add a boat", n=2
    )
    assert len(r.data) == 2, r


# What the files checks create, shared between them (they run in order).
made = {}
JSONL = b'{"custom_id": "1", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'


def files_create():
    f = client.files.create(file=("in.jsonl", JSONL, "application/jsonl"), purpose="batch")
    assert f.id.startswith("file-"), f
    assert f.bytes == len(JSONL), f
    assert f.filename == "in.jsonl", f
    made["file"] = f.id


def files_list():
    ids = [f.id for f in client.files.list().data]
    assert ids == [made["file"]], (ids, made)


def files_content():
    got = client.files.content(made["file"]).read()
    assert got == JSONL, got


def batches_create():
    b = client.batches.create(
        input_file_id=made["file"],
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "sdk"},
    )
    assert b.id.startswith("batch_"), b
    assert b.input_file_id == made["file"], b
    made["batch"] = b.id


def batches_list():
    ids = [b.id for b in client.batches.list().data]
    assert ids == [made["batch"]], (ids, made)


def batches_cancel():
    b = client.batches.cancel(made["batch"])
    assert b.id == made["batch"] and b.status == "cancelling", b


def other_team_gets_not_found():
    other = OpenAI(
        base_url=BASE_URL, api_key=os.environ["TOLLGATE_OTHER_KEY"], max_retries=0, timeout=20.0
    )
    calls = [
        lambda: other.files.retrieve(made["file"]),
        lambda: other.files.content(made["file"]).read(),
        lambda: other.files.delete(made["file"]),
        lambda: other.batches.retrieve(made["batch"]),
        lambda: other.batches.cancel(made["batch"]),
        lambda: other.batches.create(
            input_file_id=made["file"], endpoint="/v1/chat/completions", completion_window="24h"
        ),
    ]
    for i, call in enumerate(calls):
        try:
            call()
        except openai.NotFoundError as e:
            assert e.status_code == 404, e
            assert e.code == "not_found", (i, e.body)
        else:
            raise AssertionError(f"call {i} of another team's key was not refused")
    assert made["file"] not in [f.id for f in other.files.list().data]


GROUPS = {
    "surface": (moderation, image, speech, transcription, image_edit),
    "files": (
        files_create,
        files_list,
        files_content,
        batches_create,
        batches_list,
        batches_cancel,
        other_team_gets_not_found,
    ),
}

passed = failed = 0
for check in GROUPS[os.environ.get("TOLLGATE_CHECKS", "surface")]:
    try:
        check()
        print(f"ok   {check.__name__}")
        passed += 1
    except Exception:
        print(f"FAIL {check.__name__}")
        traceback.print_exc()
        failed += 1
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
