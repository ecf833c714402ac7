//! Cuts a provider's SSE byte stream into events ([`Scanner`]) and runs each
//! through a [`StreamTranslator`]. Chunks may split anywhere; the output is
//! the same however the bytes were split.

use super::StreamTranslator;
use crate::sse::{Overflow, Scanner};
use bytes::BytesMut;

/// A scanner and a translator, fed chunk by chunk.
pub struct Pipe {
    scanner: Scanner,
    translator: Box<dyn StreamTranslator>,
    finished: bool,
}

impl Pipe {
    /// `max_event`: the longest provider event accepted.
    pub fn new(translator: Box<dyn StreamTranslator>, max_event: usize) -> Self {
        Self {
            scanner: Scanner::new(max_event),
            translator,
            finished: false,
        }
    }

    /// Feeds one chunk; appends the client events it completes to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<(), Overflow> {
        let t = &mut self.translator;
        self.scanner.feed(chunk, |e| t.event(e.data, out))
    }

    /// The provider's stream ended: flushes and closes the client's stream.
    pub fn finish(&mut self, out: &mut BytesMut) -> Result<(), Overflow> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        let t = &mut self.translator;
        self.scanner.finish(|e| t.event(e.data, out))?;
        self.translator.finish(out);
        Ok(())
    }

    pub fn usage(&self) -> Option<crate::accounting::Usage> {
        self.translator.usage()
    }
}
