// The official `openai` Node SDK (pinned in package-lock.json) against the
// gateway, run by tests/sdk_node.rs: chat (whole and streamed) and an audio
// transcription whose file is an fs.ReadStream, which this SDK sends as a
// streamed multipart body (a ReadableStream without a length, so Node's
// fetch frames it chunked). Prints one JSON summary line on stdout; any
// failure throws and exits non-zero.
//
// Environment: TOLLGATE_BASE_URL (…/v1), TOLLGATE_KEY, TOLLGATE_MODEL (chat
// alias), TOLLGATE_STT_MODEL (transcription alias), TOLLGATE_UPLOAD (the
// file to upload).
import fs from "node:fs";
import { File } from "node:buffer";
import OpenAI from "openai";
import { VERSION } from "openai/version";

// Node 18 has no global File; the SDK asks for this shim there (Node 20+
// has it and this is a no-op).
globalThis.File ??= File;

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};

// What the SDK handed to fetch for each request: the body's kind and
// whether it carried a length. A ReadableStream body with no
// Content-Length is what makes fetch send Transfer-Encoding: chunked.
const seen = [];
const recordingFetch = (url, init = {}) => {
  const headers = new Headers(init.headers);
  const body = init.body;
  seen.push({
    path: new URL(String(url)).pathname,
    body: body instanceof ReadableStream ? "stream" : typeof body,
    content_length: headers.get("content-length"),
    duplex: init.duplex ?? null,
  });
  return fetch(url, init);
};

const client = new OpenAI({
  baseURL: env("TOLLGATE_BASE_URL"),
  apiKey: env("TOLLGATE_KEY"),
  fetch: recordingFetch,
  maxRetries: 0,
});
const model = env("TOLLGATE_MODEL");

const whole = await client.chat.completions.create({
  model,
  messages: [{ role: "user", content: "hi" }],
});

const stream = await client.chat.completions.create({
  model,
  messages: [{ role: "user", content: "hi" }],
  stream: true,
});
let streamed = "";
let chunks = 0;
for await (const chunk of stream) {
  chunks += 1;
  streamed += chunk.choices[0]?.delta?.content ?? "";
}

const transcription = await client.audio.transcriptions.create({
  file: fs.createReadStream(env("TOLLGATE_UPLOAD")),
  model: env("TOLLGATE_STT_MODEL"),
});

console.log(
  JSON.stringify({
    sdk: VERSION,
    node: process.version,
    chat: whole.choices[0]?.message?.content ?? null,
    chat_model: whole.model,
    stream: streamed,
    stream_chunks: chunks,
    transcription: transcription.text,
    requests: seen,
  }),
);
