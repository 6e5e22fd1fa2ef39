//! Where reports go: the table redrawn in place on a terminal (or printed once at the end when
//! stdout is a file or a pipe), one JSON report per line, or the single final JSON object.
use std::io::{self, IsTerminal, Write};

use crate::{
    cli::Format,
    report::{Report, table},
};

pub struct View {
    format: Format,
    top: usize,
    terminal: bool,
    out: io::BufWriter<io::Stdout>,
    /// stdout was closed by its reader: stop writing, it is not an error.
    closed: bool,
}

impl View {
    pub fn new(format: Format, top: usize) -> Self {
        let stdout = io::stdout();
        Self { format, top, terminal: stdout.is_terminal(), out: io::BufWriter::new(stdout), closed: false }
    }

    /// A periodic refresh.
    pub fn refresh(&mut self, report: &Report) -> io::Result<()> {
        match self.format {
            Format::Table if self.terminal => {
                let text = table::render_table(report, self.top);
                // Home, clear, draw: one write per refresh, no flicker from partial frames.
                self.write(&format!("\x1b[H\x1b[2J{text}"))
            }
            Format::Jsonl => self.write(&(serde_json::to_string(report)? + "\n")),
            Format::Table | Format::Json => Ok(()),
        }
    }

    /// The final report.
    pub fn finish(&mut self, report: &Report) -> io::Result<()> {
        match self.format {
            Format::Table => {
                let prefix = if self.terminal { "\x1b[H\x1b[2J" } else { "" };
                self.write(&format!("{prefix}{}", table::render_final(report, self.top)))
            }
            Format::Json => self.write(&(serde_json::to_string_pretty(report)? + "\n")),
            Format::Jsonl => self.write(&(serde_json::to_string(report)? + "\n")),
        }
    }

    fn write(&mut self, text: &str) -> io::Result<()> {
        if self.closed {
            return Ok(());
        }
        match self.out.write_all(text.as_bytes()).and_then(|()| self.out.flush()) {
            Err(err) if super::is_broken_pipe(&err) => {
                self.closed = true;
                Ok(())
            }
            other => other,
        }
    }
}
