//! Cuts a provider's SSE byte stream into events ([`Scanner`]) and runs each
//! through a [`StreamTranslator`]. Chunks may split anywhere; the output is
//! the same however the bytes were split.

use super::StreamTranslator;
use crate::sse::{Overflow, Scanner};
use bytes::BytesMut;
use std::sync::Mutex;

/// A scanner and a translator, fed chunk by chunk.
pub struct Pipe {
    scanner: Scanner,
    /// Only ever reached through `&mut` (`Mutex::get_mut`, no locking): the
    /// mutex just makes the pipe `Sync`, as Pingora's per-request context
    /// must be, without asking translators to be `Sync`.
    translator: Mutex<Box<dyn StreamTranslator>>,
    finished: bool,
}

impl Pipe {
    /// `max_event`: the longest provider event accepted.
    pub fn new(translator: Box<dyn StreamTranslator>, max_event: usize) -> Self {
        Self {
            scanner: Scanner::new(max_event),
            translator: Mutex::new(translator),
            finished: false,
        }
    }

    /// Feeds one chunk; appends the client events it completes to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<(), Overflow> {
        let t = self.translator.get_mut().unwrap_or_else(|e| e.into_inner());
        self.scanner.feed(chunk, |e| t.event(e.data, out))
    }

    /// The provider's stream ended: flushes and closes the client's stream.
    pub fn finish(&mut self, out: &mut BytesMut) -> Result<(), Overflow> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        let t = self.translator.get_mut().unwrap_or_else(|e| e.into_inner());
        self.scanner.finish(|e| t.event(e.data, out))?;
        t.finish(out);
        Ok(())
    }

    pub fn usage(&mut self) -> Option<crate::accounting::Usage> {
        let t = self.translator.get_mut().unwrap_or_else(|e| e.into_inner());
        t.usage()
    }
}
