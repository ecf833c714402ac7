// The official `openai` Node SDK (pinned in package-lock.json) against the
// gateway, run by tests/sdk_node.rs: a file upload from an fs.ReadStream
// (which this SDK sends as a streamed multipart body, so Node's fetch
// frames it chunked), then a batch on that file created, listed and
// cancelled, and another team's key refused with NotFoundError. Prints one
// JSON summary line on stdout; any failure throws and exits non-zero.
//
// Environment: TOLLGATE_BASE_URL (…/v1), TOLLGATE_KEY, TOLLGATE_OTHER_KEY
// (a key of another team), TOLLGATE_UPLOAD (the file to upload).
import fs from "node:fs";
import { File } from "node:buffer";
import OpenAI from "openai";

// Node 18 has no global File; the SDK asks for this shim there.
globalThis.File ??= File;

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};

// What the SDK handed to fetch for each request (see upload.mjs).
const seen = [];
const recordingFetch = (url, init = {}) => {
  const headers = new Headers(init.headers);
  const body = init.body;
  seen.push({
    method: init.method ?? "GET",
    path: new URL(String(url)).pathname,
    body: body instanceof ReadableStream ? "stream" : typeof body,
    content_length: headers.get("content-length"),
  });
  return fetch(url, init);
};

const opts = { baseURL: env("TOLLGATE_BASE_URL"), fetch: recordingFetch, maxRetries: 0 };
const client = new OpenAI({ ...opts, apiKey: env("TOLLGATE_KEY") });
const other = new OpenAI({ ...opts, apiKey: env("TOLLGATE_OTHER_KEY") });

const file = await client.files.create({
  file: fs.createReadStream(env("TOLLGATE_UPLOAD")),
  purpose: "batch",
});
const batch = await client.batches.create({
  input_file_id: file.id,
  endpoint: "/v1/chat/completions",
  completion_window: "24h",
});
const listed = [];
for await (const b of client.batches.list()) listed.push(b.id);
const cancelled = await client.batches.cancel(batch.id);

const refused = [];
for (const call of [
  () => other.files.retrieve(file.id),
  () => other.batches.retrieve(batch.id),
  () => other.batches.cancel(batch.id),
]) {
  try {
    await call();
    refused.push("answered");
  } catch (e) {
    refused.push(e instanceof OpenAI.NotFoundError ? `${e.status} ${e.code}` : String(e));
  }
}

console.log(
  JSON.stringify({
    file_id: file.id,
    file_bytes: file.bytes,
    batch_id: batch.id,
    batch_input: batch.input_file_id,
    listed,
    cancelled: cancelled.status,
    refused,
    requests: seen,
  }),
);
