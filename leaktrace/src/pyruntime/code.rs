//! Code objects read from a running CPython process's memory (`/proc/PID/mem`): the function's
//! name (`co_qualname` where the version has it, else `co_name`), its file, its first line and
//! its line table, each read once per code object; and a frame's line from the instruction the
//! walk found it at.
use std::{fs::File, os::unix::fs::FileExt};

use super::{
    PythonProcess,
    layout::{self, InstrKind, PythonLayout},
    lines,
};

/// Longest name or file name read, in characters; longer ones are cut.
const MAX_STR_CHARS: u64 = 4096;
/// Largest line table read (a code object of thousands of lines has a few kB).
const MAX_LINE_TABLE: u64 = 1 << 20;

/// What a code object says about its function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeObject {
    pub function: String,
    pub file: String,
    pub first_line: u32,
    pub line_table: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    #[error("reading {what} at {address:#x} in pid {pid}: {source}")]
    Read { pid: u32, what: &'static str, address: u64, source: std::io::Error },
    #[error("the object at {0:#x} is not a code object")]
    NotCode(u64),
    #[error("the {0} string is not a compact str")]
    NotCompact(&'static str),
    #[error("the {0} object has an implausible size {1}")]
    Size(&'static str, u64),
}

/// A process's memory, read with `pread` on `/proc/PID/mem` (needs CAP_SYS_PTRACE).
pub struct Memory {
    pid: u32,
    file: File,
}

impl Memory {
    pub fn open(pid: u32) -> std::io::Result<Self> {
        Ok(Self { pid, file: File::open(format!("/proc/{pid}/mem"))? })
    }

    fn read(&self, what: &'static str, address: u64, buffer: &mut [u8]) -> Result<(), CodeError> {
        self.file.read_exact_at(buffer, address).map_err(|source| CodeError::Read { pid: self.pid, what, address, source })
    }

    fn u64(&self, what: &'static str, address: u64) -> Result<u64, CodeError> {
        let mut bytes = [0; 8];
        self.read(what, address, &mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn u32(&self, what: &'static str, address: u64) -> Result<u32, CodeError> {
        let mut bytes = [0; 4];
        self.read(what, address, &mut bytes)?;
        Ok(u32::from_le_bytes(bytes))
    }

    /// A `str` object's text (compact strings only: every name and file name of a code object).
    fn str(&self, what: &'static str, layout: &PythonLayout, address: u64) -> Result<String, CodeError> {
        let length = self.u64(what, address + layout::STR_LENGTH)?;
        let state = self.u32(what, address + layout::STR_STATE)?;
        let (kind, compact, ascii) = ((state >> 2) & 7, state & (1 << 5) != 0, state & (1 << 6) != 0);
        if !compact || !matches!(kind, 1 | 2 | 4) {
            return Err(CodeError::NotCompact(what));
        }
        let data = address + u64::from(if ascii { layout.strings.ascii_data } else { layout.strings.compact_data });
        let chars = length.min(MAX_STR_CHARS) as usize;
        let mut bytes = vec![0; chars * kind as usize];
        self.read(what, data, &mut bytes)?;
        Ok(match kind {
            1 => bytes.iter().map(|&byte| char::from(byte)).collect(),
            2 => char::decode_utf16(bytes.chunks_exact(2).map(|unit| u16::from_le_bytes([unit[0], unit[1]])))
                .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
                .collect(),
            _ => bytes
                .chunks_exact(4)
                .map(|unit| char::from_u32(u32::from_le_bytes([unit[0], unit[1], unit[2], unit[3]])).unwrap_or(char::REPLACEMENT_CHARACTER))
                .collect(),
        })
    }

    /// A `bytes` object's contents.
    fn bytes(&self, what: &'static str, address: u64) -> Result<Vec<u8>, CodeError> {
        let size = self.u64(what, address + u64::from(layout::BYTES_SIZE))?;
        if size > MAX_LINE_TABLE {
            return Err(CodeError::Size(what, size));
        }
        let mut bytes = vec![0; size as usize];
        self.read(what, address + u64::from(layout::BYTES_DATA), &mut bytes)?;
        Ok(bytes)
    }

    /// The code object at `address`.
    pub fn code_object(&self, python: &PythonProcess, address: u64) -> Result<CodeObject, CodeError> {
        let layout = python.layout;
        if let Some(code_type) = python.code_type
            && self.u64("the code object's type", address + layout::OB_TYPE)? != code_type
        {
            return Err(CodeError::NotCode(address));
        }
        let field = |what, offset: u32| self.u64(what, address + u64::from(offset));
        let name = match layout.code.qualname {
            Some(offset) => field("co_qualname", offset)?,
            None => field("co_name", layout.code.name)?,
        };
        let function = self.str("co_qualname", layout, name)?;
        let file = self.str("co_filename", layout, field("co_filename", layout.code.filename)?)?;
        let first_line = self.u32("co_firstlineno", address + u64::from(layout.code.firstlineno))?;
        let line_table = self.bytes("co_linetable", field("co_linetable", layout.code.linetable)?)?;
        Ok(CodeObject { function, file, first_line, line_table })
    }
}

impl CodeObject {
    /// The line a frame of this code is at, from the walk's raw instruction field.
    pub fn line(&self, layout: &PythonLayout, code_address: u64, instr: u64) -> Option<u32> {
        let offset = match layout.instr {
            // f_lasti is an int; -1 before the first instruction ran.
            InstrKind::LastiBytes => u64::try_from(instr as u32 as i32).unwrap_or(0),
            InstrKind::LastiUnits => u64::try_from(instr as u32 as i32).unwrap_or(0) * 2,
            InstrKind::Pointer => instr.checked_sub(code_address + u64::from(layout.code.code_adaptive?))?,
        };
        lines::line_at(layout.line_table, &self.line_table, self.first_line, offset)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead, BufReader},
        process::{Command, Stdio},
    };

    use super::*;
    use crate::pyruntime::{Detection, detect};

    /// Interpreters on this machine: Debian's 3.11 and pyenv's 3.8 to 3.13.
    fn interpreters() -> Vec<String> {
        let mut found = vec!["/usr/bin/python3.11".to_string()];
        for minor in layout::OLDEST..=layout::NEWEST {
            let pyenv = std::fs::read_dir("/root/.pyenv/versions").ok().into_iter().flatten().flatten().find_map(|entry| {
                let path = entry.path().join(format!("bin/python3.{minor}"));
                (entry.file_name().to_string_lossy().starts_with(&format!("3.{minor}.")) && path.exists())
                    .then(|| path.to_string_lossy().to_string())
            });
            found.extend(pyenv);
        }
        found.retain(|path| {
            let present = std::path::Path::new(path).exists();
            if !present {
                eprintln!("skipped {path}: not installed");
            }
            present
        });
        found
    }

    const SCRIPT: &str = r#"
import sys
class Worker:
    def handle_job(self):
        return sys._getframe()
frame = Worker().handle_job()
print(hex(id(frame.f_code)), frame.f_code.co_firstlineno, flush=True)
sys.stdin.read()
"#;

    #[test]
    fn code_objects_of_every_installed_interpreter_name_their_function_and_file() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: reading another process's memory needs root");
            return;
        }
        for interpreter in interpreters() {
            let mut child = Command::new(&interpreter)
                .args(["-c", SCRIPT])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut line = String::new();
            BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
            let (address, first_line) = line.trim().split_once(' ').unwrap();
            let address = u64::from_str_radix(address.trim_start_matches("0x"), 16).unwrap();
            let detection = detect(child.id()).unwrap();
            let Detection::Python(python) = detection else { panic!("{interpreter}: {detection:?}") };
            let code = Memory::open(child.id()).unwrap().code_object(&python, address).unwrap();
            let expected = if python.layout.code.qualname.is_some() { "Worker.handle_job" } else { "handle_job" };
            assert_eq!(code.function, expected, "{interpreter}");
            assert_eq!(code.file, "<string>", "{interpreter}");
            assert_eq!(code.first_line.to_string(), first_line, "{interpreter}");
            assert!(!code.line_table.is_empty(), "{interpreter}");
            // Anything but a code object is refused.
            let refused = Memory::open(child.id()).unwrap().code_object(&python, python.runtime);
            assert!(refused.is_err(), "{interpreter}");
            drop(child.stdin.take());
            child.wait().unwrap();
            eprintln!("{interpreter}: {} (_PyRuntime at {:#x})", python.version, python.runtime);
        }
    }
}
