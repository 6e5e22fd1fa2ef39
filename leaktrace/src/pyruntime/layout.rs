//! Where CPython keeps what leaktrace reads, per minor version: the fields the kernel's frame
//! walk follows (as [`PythonOffsets`]) and the code object's fields userspace names a frame
//! from. Taken from CPython's own headers (`Include/cpython/code.h`, `Include/internal/
//! pycore_frame.h`, `pycore_runtime.h`, `pycore_interp.h`, `cpython/pystate.h` of each
//! release, x86_64); `header_offsets.c` prints the same numbers with `offsetof` against
//! installed headers, and a test compares them.
use leaktrace_common::PythonOffsets;

use super::PythonVersion;

/// What `f_lasti` / `prev_instr` / `instr_ptr` holds, and so how it becomes a byte offset into
/// the code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstrKind {
    /// `f_lasti`, in bytes (3.8, 3.9).
    LastiBytes,
    /// `f_lasti`, in 2-byte code units (3.10).
    LastiUnits,
    /// A pointer to the instruction, inside the code object's `co_code_adaptive` (3.11+).
    Pointer,
}

/// The format of the code object's line table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineTable {
    /// `co_lnotab` (3.8, 3.9): (byte delta, signed line delta) pairs.
    Lnotab,
    /// `co_linetable` of PEP 626 (3.10): (byte delta, signed line delta, -128 for none) pairs.
    Pep626,
    /// `co_linetable`, the location table of 3.11+ (`Objects/locations.md`).
    Locations,
}

/// `PyCodeObject` fields a frame is named from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeLayout {
    pub name: u32,
    /// `co_qualname` (3.11+): `Class.method`, `outer.<locals>.inner`.
    pub qualname: Option<u32>,
    pub filename: u32,
    /// An `int`.
    pub firstlineno: u32,
    /// `co_lnotab` or `co_linetable`, a `bytes` object.
    pub linetable: u32,
    /// `co_code_adaptive` (3.11+): where the instructions begin, inside the code object.
    pub code_adaptive: Option<u32>,
}

/// `str` objects: where the characters of a compact string begin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StrLayout {
    /// `sizeof(PyASCIIObject)`: ASCII characters follow it.
    pub ascii_data: u32,
    /// `sizeof(PyCompactUnicodeObject)`: other compact strings' characters follow it.
    pub compact_data: u32,
}

/// `bytes` objects (every supported version): `ob_size` and `ob_sval`.
pub const BYTES_SIZE: u32 = 16;
pub const BYTES_DATA: u32 = 32;
/// `ob_type`, in every object.
pub const OB_TYPE: u64 = 8;
/// `PyASCIIObject.length` and `.state` (a bit field: kind in bits 2-4, compact 5, ascii 6).
pub const STR_LENGTH: u64 = 16;
pub const STR_STATE: u64 = 32;

/// One version's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PythonLayout {
    pub minor: u32,
    /// `offsetof(_PyRuntimeState, interpreters.head)`.
    pub runtime_interpreters_head: u64,
    /// The walk's offsets; `process_start_ns` and `interpreters_head` are the process's own.
    pub walk: PythonOffsets,
    pub instr: InstrKind,
    pub line_table: LineTable,
    pub code: CodeLayout,
    pub strings: StrLayout,
}

/// The oldest and newest minor versions of Python 3 leaktrace knows.
pub const OLDEST: u32 = 8;
pub const NEWEST: u32 = 13;

#[allow(clippy::too_many_arguments)]
const fn walk(
    interp_threads_head: u32,
    tstate_thread_id: u32,
    tstate_frame: u32,
    cframe_current_frame: Option<u32>,
    frame_code: u32,
    frame_previous: u32,
    frame_instr: u32,
    frame_owner: Option<u32>,
) -> PythonOffsets {
    PythonOffsets {
        process_start_ns: 0,
        interpreters_head: 0,
        interp_threads_head,
        tstate_next: 8,
        tstate_thread_id,
        tstate_frame,
        via_cframe: cframe_current_frame.is_some() as u32,
        cframe_current_frame: match cframe_current_frame {
            Some(offset) => offset,
            None => 0,
        },
        frame_code,
        frame_previous,
        frame_instr,
        // f_lasti is an int; prev_instr and instr_ptr are pointers.
        frame_instr_size: if frame_owner.is_some() { 8 } else { 4 },
        frame_owner: match frame_owner {
            Some(offset) => offset,
            None => u32::MAX,
        },
        _pad: 0,
    }
}

const BEFORE_311_CODE: CodeLayout =
    CodeLayout { name: 112, qualname: None, filename: 104, firstlineno: 40, linetable: 120, code_adaptive: None };
const BEFORE_312_STR: StrLayout = StrLayout { ascii_data: 48, compact_data: 72 };
/// 3.12 dropped `wstr` (and `wstr_length`) from `str` objects.
const SINCE_312_STR: StrLayout = StrLayout { ascii_data: 40, compact_data: 56 };

const fn since_311_code(firstlineno: u32, code_adaptive: u32) -> CodeLayout {
    CodeLayout {
        name: 120,
        qualname: Some(128),
        filename: 112,
        firstlineno,
        linetable: 136,
        code_adaptive: Some(code_adaptive),
    }
}

const TABLE: [PythonLayout; 6] = [
    PythonLayout {
        minor: 8,
        runtime_interpreters_head: 32,
        walk: walk(8, 176, 24, None, 32, 24, 104, None),
        instr: InstrKind::LastiBytes,
        line_table: LineTable::Lnotab,
        code: BEFORE_311_CODE,
        strings: BEFORE_312_STR,
    },
    PythonLayout {
        minor: 9,
        runtime_interpreters_head: 32,
        walk: walk(8, 176, 24, None, 32, 24, 104, None),
        instr: InstrKind::LastiBytes,
        line_table: LineTable::Lnotab,
        code: BEFORE_311_CODE,
        strings: BEFORE_312_STR,
    },
    PythonLayout {
        minor: 10,
        runtime_interpreters_head: 32,
        walk: walk(8, 176, 24, None, 32, 24, 96, None),
        instr: InstrKind::LastiUnits,
        line_table: LineTable::Pep626,
        code: BEFORE_311_CODE,
        strings: BEFORE_312_STR,
    },
    PythonLayout {
        minor: 11,
        runtime_interpreters_head: 40,
        walk: walk(16, 152, 56, Some(8), 32, 48, 56, Some(69)),
        instr: InstrKind::Pointer,
        line_table: LineTable::Locations,
        code: since_311_code(72, 184),
        strings: BEFORE_312_STR,
    },
    PythonLayout {
        minor: 12,
        runtime_interpreters_head: 40,
        walk: walk(72, 136, 56, Some(0), 0, 8, 56, Some(70)),
        instr: InstrKind::Pointer,
        line_table: LineTable::Locations,
        code: since_311_code(68, 192),
        strings: SINCE_312_STR,
    },
    PythonLayout {
        minor: 13,
        runtime_interpreters_head: 632,
        walk: walk(7344, 152, 72, None, 0, 8, 56, Some(70)),
        instr: InstrKind::Pointer,
        line_table: LineTable::Locations,
        code: since_311_code(68, 200),
        strings: SINCE_312_STR,
    },
];

impl PythonLayout {
    /// The layout of `version`, if leaktrace knows it.
    pub fn of(version: PythonVersion) -> Option<&'static PythonLayout> {
        if version.major != 3 {
            return None;
        }
        TABLE.iter().find(|layout| layout.minor == version.minor)
    }

    /// The walk's offsets for a process whose `_PyRuntime` is at `runtime`.
    pub fn offsets(&self, runtime: u64, process_start_ns: u64) -> PythonOffsets {
        PythonOffsets {
            process_start_ns,
            interpreters_head: runtime + self.runtime_interpreters_head,
            ..self.walk
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, path::PathBuf, process::Command};

    use super::*;

    fn layout(minor: u32) -> &'static PythonLayout {
        PythonLayout::of(PythonVersion { major: 3, minor, micro: None }).unwrap()
    }

    #[test]
    fn python_3_8_frames_are_frame_objects_with_f_lasti_in_bytes() {
        let layout = layout(8);
        let offsets = layout.offsets(0x7f00_0000_1000, 5);
        assert_eq!(offsets.interpreters_head, 0x7f00_0000_1000 + 32);
        assert_eq!(offsets.process_start_ns, 5);
        assert_eq!((offsets.interp_threads_head, offsets.tstate_next, offsets.tstate_thread_id), (8, 8, 176));
        assert_eq!((offsets.tstate_frame, offsets.via_cframe), (24, 0));
        assert_eq!((offsets.frame_code, offsets.frame_previous, offsets.frame_instr), (32, 24, 104));
        assert_eq!((offsets.frame_instr_size, offsets.frame_owner), (4, u32::MAX));
        assert_eq!((layout.instr, layout.line_table), (InstrKind::LastiBytes, LineTable::Lnotab));
        assert_eq!((layout.code.name, layout.code.filename, layout.code.firstlineno, layout.code.linetable), (112, 104, 40, 120));
    }

    #[test]
    fn python_3_9_keeps_3_8s_layout() {
        assert_eq!(layout(9).walk, layout(8).walk);
        assert_eq!(layout(9).code, layout(8).code);
        assert_eq!(layout(9).instr, InstrKind::LastiBytes);
    }

    #[test]
    fn python_3_10_counts_f_lasti_in_code_units_and_has_pep_626_line_tables() {
        let layout = layout(10);
        assert_eq!(layout.walk.frame_instr, 96);
        assert_eq!((layout.instr, layout.line_table), (InstrKind::LastiUnits, LineTable::Pep626));
        assert_eq!(layout.code.qualname, None);
    }

    #[test]
    fn python_3_11_reaches_frames_through_cframe_and_has_qualified_names() {
        let layout = layout(11);
        let offsets = layout.offsets(0x1000, 0);
        assert_eq!(offsets.interpreters_head, 0x1000 + 40);
        assert_eq!((offsets.interp_threads_head, offsets.tstate_thread_id, offsets.tstate_frame), (16, 152, 56));
        assert_eq!((offsets.via_cframe, offsets.cframe_current_frame), (1, 8));
        assert_eq!((offsets.frame_code, offsets.frame_previous, offsets.frame_instr), (32, 48, 56));
        assert_eq!((offsets.frame_instr_size, offsets.frame_owner), (8, 69));
        assert_eq!((layout.code.qualname, layout.code.code_adaptive, layout.code.firstlineno), (Some(128), Some(184), 72));
        assert_eq!(layout.strings, StrLayout { ascii_data: 48, compact_data: 72 });
    }

    #[test]
    fn python_3_12_moves_f_code_first_and_drops_wstr() {
        let layout = layout(12);
        assert_eq!((layout.walk.interp_threads_head, layout.walk.tstate_thread_id), (72, 136));
        assert_eq!((layout.walk.via_cframe, layout.walk.cframe_current_frame), (1, 0));
        assert_eq!((layout.walk.frame_code, layout.walk.frame_previous, layout.walk.frame_owner), (0, 8, 70));
        assert_eq!((layout.code.code_adaptive, layout.code.firstlineno), (Some(192), 68));
        assert_eq!(layout.strings, StrLayout { ascii_data: 40, compact_data: 56 });
    }

    #[test]
    fn python_3_13_has_current_frame_in_the_thread_state() {
        let layout = layout(13);
        assert_eq!(layout.runtime_interpreters_head, 632);
        assert_eq!((layout.walk.interp_threads_head, layout.walk.tstate_frame, layout.walk.via_cframe), (7344, 72, 0));
        assert_eq!((layout.walk.frame_code, layout.walk.frame_instr, layout.walk.frame_instr_size), (0, 56, 8));
        assert_eq!(layout.code.code_adaptive, Some(200));
    }

    #[test]
    fn versions_outside_3_8_to_3_13_have_no_layout() {
        for (major, minor) in [(2, 7), (3, 6), (3, 7), (3, 14)] {
            assert_eq!(PythonLayout::of(PythonVersion { major, minor, micro: None }), None, "{major}.{minor}");
        }
    }

    /// Include directories of this machine's CPython headers for `minor`: pyenv's, or Debian's
    /// for 3.11.
    fn headers(minor: u32) -> Option<Vec<PathBuf>> {
        let pyenv = std::fs::read_dir("/root/.pyenv/versions").ok().into_iter().flatten().flatten().find_map(|entry| {
            let name = entry.file_name().to_string_lossy().to_string();
            let include = entry.path().join(format!("include/python3.{minor}"));
            (name.starts_with(&format!("3.{minor}.")) && include.join("internal").is_dir()).then(|| vec![include])
        });
        pyenv.or_else(|| {
            let debian = PathBuf::from(format!("/usr/include/python3.{minor}"));
            (debian.join("internal").is_dir())
                .then(|| vec![debian, PathBuf::from(format!("/usr/include/x86_64-linux-gnu/python3.{minor}"))])
        })
    }

    /// Compiles `header_offsets.c` against each installed version's headers and checks the table
    /// against what `offsetof` says.
    #[test]
    fn the_table_matches_offsetof_in_cpythons_own_headers() {
        if Command::new("cc").arg("--version").output().is_err() {
            eprintln!("skipped: no C compiler (cc) to compile header_offsets.c");
            return;
        }
        let dir = std::env::temp_dir().join(format!("leaktrace-pyoffsets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let source = dir.join("header_offsets.c");
        std::fs::write(&source, include_str!("header_offsets.c")).unwrap();
        let mut checked = 0;
        for minor in OLDEST..=NEWEST {
            let Some(includes) = headers(minor) else {
                eprintln!("skipped Python 3.{minor}: its headers (with internal/) are not installed");
                continue;
            };
            let binary = dir.join(format!("offsets-3.{minor}"));
            let mut cc = Command::new("cc");
            cc.arg("-o").arg(&binary).arg(&source);
            for include in &includes {
                cc.arg("-I").arg(include);
            }
            let built = cc.output().unwrap();
            assert!(built.status.success(), "3.{minor}: {}", String::from_utf8_lossy(&built.stderr));
            let printed = Command::new(&binary).output().unwrap();
            let found: HashMap<String, u64> = String::from_utf8(printed.stdout)
                .unwrap()
                .lines()
                .map(|line| {
                    let (name, value) = line.split_once(' ').unwrap();
                    (name.to_string(), value.parse().unwrap())
                })
                .collect();
            let layout = layout(minor);
            let walk = &layout.walk;
            let mut expected = vec![
                ("interpreters_head", layout.runtime_interpreters_head),
                ("interp_threads_head", walk.interp_threads_head.into()),
                ("tstate_next", walk.tstate_next.into()),
                ("tstate_thread_id", walk.tstate_thread_id.into()),
                ("tstate_frame", walk.tstate_frame.into()),
                ("frame_code", walk.frame_code.into()),
                ("frame_previous", walk.frame_previous.into()),
                ("frame_instr", walk.frame_instr.into()),
                ("code_name", layout.code.name.into()),
                ("code_filename", layout.code.filename.into()),
                ("code_firstlineno", layout.code.firstlineno.into()),
                ("code_linetable", layout.code.linetable.into()),
                ("ascii_size", layout.strings.ascii_data.into()),
                ("compact_size", layout.strings.compact_data.into()),
                ("bytes_sval", BYTES_DATA.into()),
                ("bytes_size", BYTES_SIZE.into()),
            ];
            if walk.via_cframe != 0 {
                expected.push(("cframe_current_frame", walk.cframe_current_frame.into()));
            }
            if walk.frame_owner != u32::MAX {
                expected.push(("frame_owner", walk.frame_owner.into()));
            }
            if let (Some(qualname), Some(adaptive)) = (layout.code.qualname, layout.code.code_adaptive) {
                expected.extend([("code_qualname", qualname.into()), ("code_adaptive", adaptive.into())]);
            }
            for (name, value) in expected {
                assert_eq!(found.get(name), Some(&value), "3.{minor} {name} (headers: {includes:?})");
            }
            assert_eq!(found.len(), expected_len(layout), "3.{minor}: every printed offset is checked");
            checked += 1;
        }
        let _ = std::fs::remove_dir_all(&dir);
        eprintln!("checked {checked} versions against their headers");
    }

    fn expected_len(layout: &PythonLayout) -> usize {
        16 + (layout.walk.via_cframe != 0) as usize
            + (layout.walk.frame_owner != u32::MAX) as usize
            + 2 * layout.code.qualname.is_some() as usize
    }
}
