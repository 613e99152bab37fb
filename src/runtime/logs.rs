//! The container log: one JSON object per line, `{"log": "...\n", "stream": "stdout",
//! "time": "..."}` (Docker's json-file format). The shim writes it from the container's
//! stdout and stderr pipes, copying the raw bytes to an attached client as they come.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Docker splits lines longer than this into several entries.
const MAX_ENTRY: usize = 16 * 1024;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct LogEntry {
    pub log: String,
    pub stream: String,
    pub time: String,
}

/// Copies `src` (a pipe) into the log as entries of `stream`, and raw to `attach` while it
/// accepts writes. Returns at end-of-file.
pub fn pump(src: File, stream: &str, log: Arc<Mutex<File>>, mut attach: Option<File>) {
    let mut src = src;
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if let Some(a) = attach.as_mut()
            && a.write_all(&buf[..n]).is_err()
        {
            attach = None; // the client went away; the container goes on
        }
        pending.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while let Some(pos) = pending[start..].iter().position(|&b| b == b'\n') {
            let end = start + pos + 1;
            write_entry(&log, stream, &pending[start..end]);
            start = end;
        }
        pending.drain(..start);
        while pending.len() >= MAX_ENTRY {
            let rest = pending.split_off(MAX_ENTRY);
            write_entry(&log, stream, &pending);
            pending = rest;
        }
    }
    if !pending.is_empty() {
        write_entry(&log, stream, &pending);
    }
}

fn write_entry(log: &Mutex<File>, stream: &str, bytes: &[u8]) {
    let entry = LogEntry {
        log: String::from_utf8_lossy(bytes).into_owned(),
        stream: stream.to_string(),
        time: super::time::now(),
    };
    if let Ok(mut line) = serde_json::to_vec(&entry) {
        line.push(b'\n');
        if let Ok(mut f) = log.lock() {
            let _ = f.write_all(&line);
        }
    }
}

/// Reads the log at `path`: the last `tail` entries (all when `None`), then, with `follow`,
/// new entries until `running()` turns false and nothing more is written. Calls `out` for
/// each entry; stops early if `out` fails.
pub fn read(
    path: &Path,
    tail: Option<usize>,
    follow: bool,
    running: &dyn Fn() -> bool,
    out: &mut dyn FnMut(&LogEntry) -> io::Result<()>,
) -> io::Result<()> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !follow => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut reader = BufReader::new(file);
    let mut entries: Vec<LogEntry> = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        if !line.ends_with('\n') {
            // A line being written: read it again later.
            let back = line.len() as i64;
            reader.seek(SeekFrom::Current(-back))?;
            break;
        }
        if let Ok(e) = serde_json::from_str::<LogEntry>(&line) {
            entries.push(e);
        }
    }
    let skip = tail.map_or(0, |t| entries.len().saturating_sub(t));
    for e in &entries[skip..] {
        out(e)?;
    }
    if !follow {
        return Ok(());
    }
    loop {
        let alive = running();
        let mut got = false;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                break;
            }
            if !line.ends_with('\n') {
                let back = line.len() as i64;
                reader.seek(SeekFrom::Current(-back))?;
                break;
            }
            got = true;
            if let Ok(e) = serde_json::from_str::<LogEntry>(&line) {
                out(&e)?;
            }
        }
        if !alive && !got {
            return Ok(());
        }
        if !got {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pump_splits_lines_and_keeps_partials() {
        let tmp = tempfile::tempdir().unwrap();
        let log_path = tmp.path().join("log");
        let log = Arc::new(Mutex::new(File::create(&log_path).unwrap()));
        let src_path = tmp.path().join("src");
        std::fs::write(&src_path, b"one\ntwo\nno newline").unwrap();
        pump(File::open(&src_path).unwrap(), "stdout", log, None);
        let mut got = Vec::new();
        read(&log_path, None, false, &|| false, &mut |e| {
            got.push(e.log.clone());
            Ok(())
        })
        .unwrap();
        assert_eq!(got, ["one\n", "two\n", "no newline"]);
        let mut last = Vec::new();
        read(&log_path, Some(1), false, &|| false, &mut |e| {
            last.push(e.log.clone());
            Ok(())
        })
        .unwrap();
        assert_eq!(last, ["no newline"]);
    }
}
