"""The official `openai` Python SDK's moderations, images and speech calls
through a running Tollgate gateway (run by tests/surface.rs).

The gateway must serve `mod` (moderations), `img` (images) and `tts`
(speech). TOLLGATE_EXPECT_AUDIO_HEX is the audio the upstream sends, as hex:
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


passed = failed = 0
for check in (moderation, image, speech):
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
