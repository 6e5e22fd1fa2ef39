//! Frames as text, the way `perf script` and `go tool pprof -traces` users read them: one frame
//! a line, innermost first, address, function, `file:line`, and the module in parentheses;
//! inlined calls and recovered callers marked; the most telling frame flagged with `=>`.
use std::fmt;

use super::{Frame, SymbolizedStack};

/// What stands for an unknown function, as perf prints it.
pub const UNKNOWN: &str = "[unknown]";

impl Frame {
    /// The file's last path component and the line: `clientconn.go:1142`.
    pub fn location(&self) -> Option<String> {
        let file = self.file.as_deref()?;
        let base = file.rsplit('/').next().unwrap_or(file);
        Some(match self.line {
            Some(line) => format!("{base}:{line}"),
            None => base.to_string(),
        })
    }

    /// The module's file name: `libc.so.6`.
    pub fn module_name(&self) -> Option<&str> {
        let module = self.module.as_deref()?;
        Some(module.rsplit('/').next().unwrap_or(module))
    }

    /// One short cell for a table: `main.dialBackend main.go:42`, or `0x4011f6 (app)` when
    /// nothing better is known.
    pub fn short(&self) -> String {
        match (&self.function, self.location()) {
            // A Python frame: `handle_job (jobs.py:42)`, as tracebacks name them.
            (Some(function), Some(location)) if self.runtime.is_some() => format!("{function} ({location})"),
            (Some(function), Some(location)) => format!("{function} {location}"),
            (Some(function), None) => function.clone(),
            (None, _) => match self.module_name() {
                Some(module) => format!("{:#x} ({module})", self.address),
                None => format!("{:#x}", self.address),
            },
        }
    }
}

/// `0x401234 dial sockpuppet.c:86 (sockpuppet)`: perf script's order, with the file and line
/// pprof adds.
impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:#x} {}",
            self.address,
            self.function.as_deref().unwrap_or(UNKNOWN)
        )?;
        if self.inlined {
            write!(f, " (inlined)")?;
        }
        if self.recovered {
            write!(f, " (recovered caller)")?;
        }
        if let Some(location) = self.location() {
            write!(f, " {location}")?;
        }
        match self.runtime {
            Some(super::FrameRuntime::Python) => write!(f, " (python)"),
            None => write!(f, " ({})", self.module.as_deref().unwrap_or(UNKNOWN)),
        }
    }
}

impl SymbolizedStack {
    /// The stack as lines, innermost first, each indented, the telling frame marked `=>`, and a
    /// last line when the stack is known to be cut short.
    pub fn trace_lines(&self) -> Vec<String> {
        let mut lines = Vec::with_capacity(self.frames.len());
        let mut hop = None;
        for (index, frame) in self.frames.iter().enumerate() {
            if frame.spawned_by != hop {
                hop = frame.spawned_by;
                if let Some(hop) = hop {
                    lines.push(format!("   -- the goroutine above was started here, at a go statement (hop {hop}) --"));
                }
            }
            let marker = if Some(index) == self.telling_frame {
                "=>"
            } else {
                "  "
            };
            lines.push(format!("{marker} {frame}"));
        }
        if self.truncated {
            lines.push(
                "   ... (stack truncated: the frame-pointer walk stopped before the thread's root)"
                    .into(),
            );
        }
        lines
    }
}

impl fmt::Display for SymbolizedStack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in self.trace_lines() {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_read_like_perf_script_with_lines() {
        let frame = Frame {
            runtime: None,
            address: 0x4011f6,
            function: Some("main.dialBackend".into()),
            file: Some("/src/grpcleak/main.go".into()),
            line: Some(42),
            module: Some("/usr/local/bin/grpcleak".into()),
            inlined: false,
            recovered: false,
            spawned_by: None,
        };
        assert_eq!(
            frame.to_string(),
            "0x4011f6 main.dialBackend main.go:42 (/usr/local/bin/grpcleak)"
        );
        assert_eq!(frame.short(), "main.dialBackend main.go:42");
        let unknown = Frame {
            function: None,
            file: None,
            line: None,
            module: None,
            ..frame.clone()
        };
        assert_eq!(unknown.to_string(), "0x4011f6 [unknown] ([unknown])");
        assert_eq!(unknown.short(), "0x4011f6");
        let stack = SymbolizedStack {
            frames: vec![
                Frame {
                    inlined: true,
                    ..frame.clone()
                },
                frame,
            ],
            telling_frame: Some(1),
            truncated: true,
        };
        let lines = stack.trace_lines();
        assert_eq!(
            lines[0],
            "   0x4011f6 main.dialBackend (inlined) main.go:42 (/usr/local/bin/grpcleak)"
        );
        assert!(lines[1].starts_with("=> 0x4011f6 main.dialBackend"));
        assert!(lines[2].contains("truncated"));
    }
}
