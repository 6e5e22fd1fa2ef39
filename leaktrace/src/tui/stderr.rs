//! While the interactive view owns the terminal, what leaktrace writes to stderr (its log lines)
//! would scribble over the screen: it goes into a pipe instead, its last line is shown at the
//! bottom of the view, and all of it is written to the real stderr when the view ends.
use std::{
    collections::VecDeque,
    io::{self, BufRead, BufReader, IsTerminal, Write},
    os::fd::{AsFd, OwnedFd},
    sync::{Arc, Mutex},
    thread::JoinHandle,
};

/// Lines kept; older ones are counted, not kept.
const MAX_LINES: usize = 1000;

#[derive(Default)]
struct Captured {
    lines: VecDeque<String>,
    dropped: u64,
}

pub struct StderrCapture {
    /// The real stderr, put back at the end.
    saved: OwnedFd,
    captured: Arc<Mutex<Captured>>,
    reader: Option<JoinHandle<()>>,
}

impl StderrCapture {
    /// Diverts stderr when it is the terminal; a stderr redirected elsewhere is left alone.
    pub fn start() -> io::Result<Option<Self>> {
        let stderr = io::stderr();
        if !stderr.is_terminal() {
            return Ok(None);
        }
        let saved = stderr.as_fd().try_clone_to_owned()?;
        let (read, write) = io::pipe()?;
        rustix::stdio::dup2_stderr(&write)?;
        // fd 2 is now the pipe's only write end: the reader sees its end when fd 2 is put back.
        drop(write);
        let captured = Arc::new(Mutex::new(Captured::default()));
        let reader = {
            let captured = Arc::clone(&captured);
            std::thread::Builder::new().name("leaktrace-stderr".into()).spawn(move || {
                for line in BufReader::new(read).lines() {
                    let Ok(line) = line else { return };
                    let mut captured = captured.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    if captured.lines.len() == MAX_LINES {
                        captured.lines.pop_front();
                        captured.dropped += 1;
                    }
                    captured.lines.push_back(line);
                }
            })?
        };
        Ok(Some(Self { saved, captured, reader: Some(reader) }))
    }

    /// The last line written, for the view's status, without its colours.
    pub fn last_line(&self) -> Option<String> {
        self.captured.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).lines.back().map(|line| plain(line))
    }
}

/// `line` without its terminal escape sequences (the log's colours: `ESC [ ... m`), which the
/// view would otherwise show as text.
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        // CSI: parameters and intermediates up to a final byte in '@'..='~'.
        if chars.clone().next() == Some('[') {
            chars.next();
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

impl Drop for StderrCapture {
    /// Puts stderr back and writes there what was captured.
    fn drop(&mut self) {
        if rustix::stdio::dup2_stderr(&self.saved).is_err() {
            return;
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let captured = std::mem::take(&mut *self.captured.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        let mut stderr = io::stderr().lock();
        if captured.dropped > 0 {
            let _ = writeln!(stderr, "({} earlier lines written during the interactive view were dropped)", captured.dropped);
        }
        for line in captured.lines {
            let _ = writeln!(stderr, "{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn colours_are_left_out_of_the_status_line() {
        let logged = "\x1b[90m[\x1b[0m\x1b[32mINFO \x1b[0m\x1b[90m]\x1b[0m goroutine ancestry attached to pid 5002";
        assert_eq!(super::plain(logged), "[INFO ] goroutine ancestry attached to pid 5002");
        assert_eq!(super::plain("no colour"), "no colour");
    }
}
