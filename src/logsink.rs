//! Where strata's own `tracing` lines go: standard error, through a writer that cannot fail.
//!
//! A shim's standard error is `shim.log` on the state root's disk; when that disk is full a
//! log write fails with ENOSPC, and a logger that reports (or panics on) its own failure
//! would take the FUSE threads, and so the container, down with it. Here a refused write is
//! dropped and counted, never reported through the channel that just failed. This module
//! never decides what is logged.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};

static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Standard error that swallows its own failures (see the module comment).
#[derive(Debug, Clone, Copy, Default)]
pub struct LossyStderr;

impl Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if io::stderr().lock().write_all(buf).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().lock().flush();
        Ok(())
    }
}

/// How many log writes were dropped in this process.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_always_succeeds() {
        let mut w = LossyStderr;
        assert_eq!(w.write(b"").unwrap(), 0);
        assert!(w.flush().is_ok());
    }
}
