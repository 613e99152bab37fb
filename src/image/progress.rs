//! Progress bars for long blob work, drawn on stderr only when asked and stderr is a terminal.

use std::io::{IsTerminal, Read};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Blobs smaller than this get no bar (it would only flicker).
const MIN_BAR_BYTES: u64 = 4 << 20;

#[derive(Clone, Copy, Debug)]
pub(crate) struct Progress {
    enabled: bool,
}

/// A bar that clears itself when dropped (also on an error path).
pub(crate) struct Bar(Option<ProgressBar>);

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(pb) = self.0.take() {
            pb.finish_and_clear();
        }
    }
}

impl Progress {
    pub fn new(wanted: bool) -> Self {
        Self {
            enabled: wanted && std::io::stderr().is_terminal(),
        }
    }

    /// Wraps `r` (of `len` bytes) so reading it advances a bar labelled `msg`.
    pub fn wrap<'a, R: Read + 'a>(&self, r: R, len: u64, msg: &str) -> (Box<dyn Read + 'a>, Bar) {
        if !self.enabled || len < MIN_BAR_BYTES {
            return (Box::new(r), Bar(None));
        }
        let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{msg:<23!} [{wide_bar}] {bytes:>10}/{total_bytes:<10} {eta:>3}",
        ) {
            pb.set_style(style.progress_chars("=> "));
        }
        pb.set_message(msg.to_string());
        (Box::new(pb.wrap_read(r)), Bar(Some(pb)))
    }
}
