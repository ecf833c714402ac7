"""The official `openai` Python SDK's moderations, images, speech,
transcription and image-edit calls through a running Tollgate gateway (run
by tests/surface.rs).

The gateway must serve `mod` (moderations), `img` (images and image
edits), `tts` (speech) and `stt` (transcriptions). TOLLGATE_EXPECT_AUDIO_HEX is the audio the upstream sends, as hex:
the SDK must receive exactly those bytes.

Prints one line per check, then `N passed, M failed`; exits 1 if any failed.
"""

import os
import sys
import traceback

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


passed = failed = 0
for check in (moderation, image, speech, transcription, image_edit):
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
