//! Whether a process runs CPython, which version, and where its `_PyRuntime` is: read from the
//! executable or the `libpython3.X.so` it maps (opened through `/proc/PID/map_files`, so a
//! container's files are read whatever its mount namespace), never from the process's memory.
use std::{fs::File, path::Path};

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};

use super::{PythonVersion, layout::PythonLayout};

/// A CPython process leaktrace can walk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PythonProcess {
    pub version: PythonVersion,
    pub layout: &'static PythonLayout,
    /// Address of `_PyRuntime` in the process (ASLR applied).
    pub runtime: u64,
    /// Address of `PyCode_Type` in the process: a frame's code object has it as its type.
    pub code_type: Option<u64>,
    /// The file that holds the runtime, as the process sees its path.
    pub module: String,
}

/// What [`detect`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Detection {
    NotPython,
    /// CPython, but not one leaktrace can walk: its connections keep their native stack.
    Unsupported { version: Option<PythonVersion>, module: String, reason: String },
    Python(PythonProcess),
}

#[derive(Debug, thiserror::Error)]
#[error("reading /proc/{pid}/maps: {source} (the process exited, or leaktrace lacks CAP_SYS_PTRACE)")]
pub struct DetectError {
    pub pid: u32,
    #[source]
    pub source: std::io::Error,
}

/// One line of `/proc/PID/maps`: start, file offset, path.
struct MapLine<'a> {
    start: u64,
    end: u64,
    offset: u64,
    path: &'a str,
}

fn map_lines(text: &str) -> impl Iterator<Item = MapLine<'_>> {
    text.lines().filter_map(|line| {
        let mut fields = line.splitn(6, ' ');
        let (range, _perms, offset, _dev, _inode) =
            (fields.next()?, fields.next()?, fields.next()?, fields.next()?, fields.next()?);
        let path = fields.next()?.trim_start();
        let (start, end) = range.split_once('-')?;
        Some(MapLine {
            start: u64::from_str_radix(start, 16).ok()?,
            end: u64::from_str_radix(end, 16).ok()?,
            offset: u64::from_str_radix(offset, 16).ok()?,
            path: path.strip_suffix(" (deleted)").unwrap_or(path),
        })
    })
}

/// Whether a mapped file's name says it may hold CPython: `libpython3.11.so.1.0`,
/// `python3.11`, `python3`. A program that links CPython statically under another name is not
/// looked into.
fn may_be_python(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.starts_with("libpython") || name.starts_with("python")
}

/// Whether `/proc/PID/maps` names a file that may hold CPython: the cheap test before
/// [`detect`].
pub fn maps_name_python(maps: &str) -> bool {
    map_lines(maps).any(|line| line.path.starts_with('/') && may_be_python(line.path))
}

/// The version a file's name gives: `libpython3.7m.so` is 3.7, `python3.11` 3.11.
pub fn version_from_name(path: &str) -> Option<PythonVersion> {
    let name = path.rsplit('/').next().unwrap_or(path);
    let rest = name.strip_prefix("lib").unwrap_or(name).strip_prefix("python")?;
    let (major, rest) = rest.split_once('.')?;
    let minor: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some(PythonVersion { major: major.parse().ok()?, minor: minor.parse().ok()?, micro: None })
}

/// Finds CPython in `pid`.
pub fn detect(pid: u32) -> Result<Detection, DetectError> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).map_err(|source| DetectError { pid, source })?;
    let mut candidates: Vec<&str> = Vec::new();
    for line in map_lines(&maps) {
        if line.path.starts_with('/') && may_be_python(line.path) && !candidates.contains(&line.path) {
            candidates.push(line.path);
        }
    }
    // The library first: a `python3` executable that maps libpython is a small launcher.
    candidates.sort_by_key(|path| !path.rsplit('/').next().unwrap_or(path).starts_with("libpython"));
    let mut unsupported = None;
    for path in candidates {
        let Some(first) = map_lines(&maps).find(|line| line.path == path) else { continue };
        let file = File::open(format!("/proc/{pid}/map_files/{:x}-{:x}", first.start, first.end))
            .or_else(|_| File::open(format!("/proc/{pid}/root{path}")));
        let Ok(file) = file else { continue };
        // The lowest address the file is mapped at from its start.
        let Some(base) = map_lines(&maps).filter(|line| line.path == path && line.offset == 0).map(|line| line.start).min()
        else {
            continue;
        };
        match inspect(&file, path, base) {
            Some(Detection::Python(found)) => return Ok(Detection::Python(found)),
            Some(other) if unsupported.is_none() => unsupported = Some(other),
            _ => {}
        }
    }
    Ok(unsupported.unwrap_or(Detection::NotPython))
}

/// What one mapped file says: `None` when it holds no CPython runtime and its name gives no
/// version either.
fn inspect(file: &File, path: &str, base: u64) -> Option<Detection> {
    // SAFETY: read-only and private; a file rewritten while mapped gives wrong numbers, not
    // unsoundness (object bounds-checks every read).
    let map = unsafe { memmap2::Mmap::map(file) }.ok()?;
    let elf = object::File::parse(&*map).ok()?;
    let symbol = |name: &str| {
        elf.dynamic_symbols()
            .chain(elf.symbols())
            .find(|symbol| symbol.name() == Ok(name) && symbol.address() != 0)
            .map(|symbol| symbol.address())
    };
    let named = version_from_name(path);
    let Some(runtime) = symbol("_PyRuntime") else {
        return named.map(|version| Detection::Unsupported {
            version: Some(version),
            module: path.to_string(),
            reason: "no _PyRuntime symbol: CPython before 3.7 (or a stripped build) keeps no runtime state \
                     leaktrace can find"
                .to_string(),
        });
    };
    // `Py_Version` (3.11+): PY_VERSION_HEX, 0xMMmmPPxx.
    let stamped = symbol("Py_Version").and_then(|address| {
        let bytes = elf.sections().find_map(|section| section.data_range(address, 4).ok().flatten())?;
        let hex = u32::from_le_bytes(bytes.try_into().ok()?);
        Some(PythonVersion { major: hex >> 24, minor: (hex >> 16) & 0xff, micro: Some((hex >> 8) & 0xff) })
    });
    let Some(version) = stamped.or(named) else {
        return Some(Detection::Unsupported {
            version: None,
            module: path.to_string(),
            reason: "CPython of an unknown version: no Py_Version symbol and no version in the file's name".to_string(),
        });
    };
    let Some(layout) = PythonLayout::of(version) else {
        return Some(Detection::Unsupported {
            version: Some(version),
            module: path.to_string(),
            reason: format!(
                "{version}: leaktrace knows the layouts of CPython 3.{} to 3.{}",
                super::layout::OLDEST,
                super::layout::NEWEST
            ),
        });
    };
    if let Some(reason) = elf
        .sections()
        .find_map(|section| section.data_range(runtime, DEBUG_OFFSETS_SIZE).ok().flatten())
        .and_then(|debug_offsets| debug_offsets_disagree(debug_offsets, layout))
    {
        return Some(Detection::Unsupported { version: Some(version), module: path.to_string(), reason });
    }
    // Where the file's first byte is mapped, against the address its first segment asks for.
    let first_segment =
        elf.segments().filter(|segment| segment.file_range().0 == 0).map(|segment| segment.address()).min().unwrap_or(0);
    let bias = base.wrapping_sub(first_segment & !0xfff);
    Some(Detection::Python(PythonProcess {
        version,
        layout,
        runtime: runtime.wrapping_add(bias),
        code_type: symbol("PyCode_Type").map(|address| address.wrapping_add(bias)),
        module: path.to_string(),
    }))
}

/// Bytes of `_Py_DebugOffsets` (3.13) read: up to `pyobject.ob_type`.
const DEBUG_OFFSETS_SIZE: u64 = 368;

/// From 3.13, `_PyRuntime` starts with `_Py_DebugOffsets` (cookie `xdebugpy`), the offsets of
/// this very build, initialised in the file: where they differ from the table (a free-threaded
/// or otherwise configured build), the table would read the wrong fields. Says how, if so.
fn debug_offsets_disagree(bytes: &[u8], layout: &PythonLayout) -> Option<String> {
    if layout.minor < 13 || !bytes.starts_with(b"xdebugpy") {
        return None;
    }
    let word = |at: usize| bytes.get(at..at + 8).map_or(u64::MAX, |word| u64::from_le_bytes(word.try_into().unwrap()));
    if word(16) != 0 {
        return Some("a free-threaded build (its objects and frames are laid out differently)".to_string());
    }
    let (walk, code) = (&layout.walk, &layout.code);
    let expected: [(&str, usize, u64); 15] = [
        ("runtime_state.interpreters_head", 40, layout.runtime_interpreters_head),
        ("interpreter_state.threads_head", 72, walk.interp_threads_head.into()),
        ("thread_state.next", 168, walk.tstate_next.into()),
        ("thread_state.current_frame", 184, walk.tstate_frame.into()),
        ("thread_state.thread_id", 192, walk.tstate_thread_id.into()),
        ("interpreter_frame.previous", 232, walk.frame_previous.into()),
        ("interpreter_frame.executable", 240, walk.frame_code.into()),
        ("interpreter_frame.instr_ptr", 248, walk.frame_instr.into()),
        ("interpreter_frame.owner", 264, walk.frame_owner.into()),
        ("code_object.filename", 280, code.filename.into()),
        ("code_object.qualname", 296, code.qualname.unwrap_or(u32::MAX).into()),
        ("code_object.linetable", 304, code.linetable.into()),
        ("code_object.firstlineno", 312, code.firstlineno.into()),
        ("code_object.co_code_adaptive", 344, code.code_adaptive.unwrap_or(u32::MAX).into()),
        ("pyobject.ob_type", 360, super::layout::OB_TYPE),
    ];
    let differ: Vec<String> = expected
        .iter()
        .filter(|(_, at, value)| word(*at) != *value)
        .map(|(name, at, value)| format!("{name} is {} here, {value} in leaktrace's table", word(*at)))
        .collect();
    (!differ.is_empty()).then(|| format!("this build's _Py_DebugOffsets differ from leaktrace's table: {}", differ.join(", ")))
}

/// Whether `path` (an executable or library on this host) holds CPython, and which: for tests
/// and diagnostics, as if mapped at its own addresses.
pub fn inspect_file(path: &Path) -> Option<Detection> {
    let file = File::open(path).ok()?;
    inspect(&file, &path.to_string_lossy(), 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_give_versions() {
        let version = |path| version_from_name(path).map(|v: PythonVersion| (v.major, v.minor));
        assert_eq!(version("/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0"), Some((3, 11)));
        assert_eq!(version("/root/.pyenv/versions/3.7.16/lib/libpython3.7m.so.1.0"), Some((3, 7)));
        assert_eq!(version("/usr/bin/python3.13"), Some((3, 13)));
        assert_eq!(version("/usr/bin/python2.7"), Some((2, 7)));
        assert_eq!(version("/usr/bin/python3"), None);
        assert_eq!(version("/usr/bin/pythonic"), None);
    }

    #[test]
    fn maps_lines_with_spaces_and_deleted_files_parse() {
        let maps = "00400000-00420000 r--p 00000000 08:01 1234 /usr/bin/python3.11\n\
                    7f00-7f10 r-xp 00001000 08:01 99 /opt/my app/libpython3.12.so.1.0 (deleted)\n\
                    7ffd-7ffe rw-p 00000000 00:00 0 [stack]\n";
        let lines: Vec<_> = map_lines(maps).map(|line| (line.start, line.offset, line.path)).collect();
        assert_eq!(lines[0], (0x400000, 0, "/usr/bin/python3.11"));
        assert_eq!(lines[1], (0x7f00, 0x1000, "/opt/my app/libpython3.12.so.1.0"));
        assert!(maps_name_python(maps));
        assert!(!maps_name_python("7ffd-7ffe rw-p 00000000 00:00 0 [stack]\n"));
    }

    #[test]
    fn debians_python_3_11_is_found_with_its_version_stamp() {
        let path = Path::new("/usr/bin/python3.11");
        if !path.exists() {
            eprintln!("skipped: /usr/bin/python3.11 is not installed (cargo xtask setup --test-deps installs it)");
            return;
        }
        let Some(Detection::Python(found)) = inspect_file(path) else { panic!("{:?}", inspect_file(path)) };
        assert_eq!((found.version.major, found.version.minor), (3, 11));
        assert!(found.version.micro.is_some());
        assert!(found.runtime != 0 && found.code_type.is_some());
        assert_eq!(found.layout.minor, 11);
    }

    #[test]
    fn python_3_13s_own_debug_offsets_agree_with_the_table_and_a_differing_build_is_refused() {
        let Some(library) = std::fs::read_dir("/root/.pyenv/versions").ok().and_then(|dir| {
            dir.flatten().map(|entry| entry.path().join("lib/libpython3.13.so.1.0")).find(|path| path.exists())
        }) else {
            eprintln!("skipped: no pyenv build of Python 3.13 under /root/.pyenv/versions");
            return;
        };
        let Some(Detection::Python(found)) = inspect_file(&library) else { panic!("{:?}", inspect_file(&library)) };
        let bytes = std::fs::read(&library).unwrap();
        let elf = object::File::parse(&*bytes).unwrap();
        let offsets = elf.sections().find_map(|section| section.data_range(found.runtime, DEBUG_OFFSETS_SIZE).ok().flatten()).unwrap();
        assert!(offsets.starts_with(b"xdebugpy"));
        assert_eq!(debug_offsets_disagree(offsets, found.layout), None);
        let mut changed = offsets.to_vec();
        changed[72] = 0x10;
        let reason = debug_offsets_disagree(&changed, found.layout).unwrap();
        assert!(reason.contains("interpreter_state.threads_head is"), "{reason}");
        changed[16] = 1;
        assert!(debug_offsets_disagree(&changed, found.layout).unwrap().contains("free-threaded"));
    }

    #[test]
    fn python_2_7_and_3_7_are_said_to_be_unsupported() {
        for (library, words) in [
            ("/root/.pyenv/versions/2.7.18/lib/libpython2.7.so.1.0", "no _PyRuntime"),
            ("/root/.pyenv/versions/3.7.16/lib/libpython3.7m.so.1.0", "3.8 to 3.13"),
        ] {
            let path = Path::new(library);
            if !path.exists() {
                eprintln!("skipped {library}: not installed");
                continue;
            }
            let Some(Detection::Unsupported { reason, .. }) = inspect_file(path) else { panic!("{library}") };
            assert!(reason.contains(words), "{library}: {reason}");
        }
    }
}
