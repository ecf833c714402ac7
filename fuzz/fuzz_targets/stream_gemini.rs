//! The stream translator Gemini `streamGenerateContent` events → OpenAI `chat.completion.chunk` events, behind the scanner
//! (`translate::pipe::Pipe`), on any byte stream: never panics, writes
//! only whole events whose data is JSON (or `[DONE]`), and writes the
//! same bytes and reports the same usage however the stream is split.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use tollgate::translate::{gemini::ChatStream as Translator, ResponseOpts, StreamTranslator};

fn make(opts: &ResponseOpts) -> Box<dyn StreamTranslator> {
    Box::new(Translator::new(opts))
}

fuzz_target!(|data: &[u8]| common::check_stream(data, &make));
