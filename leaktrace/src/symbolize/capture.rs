//! Capture at first sight: a process's executable mappings and an open file descriptor for
//! every file behind them, taken when its first connection is seen, so its stacks still
//! symbolize after it has exited, after its binary was deleted or replaced, and when the binary
//! lives in another mount namespace (a container) that the host's paths do not show.
//!
//! Files are pinned through `/proc/PID/map_files/START-END` (the very inode that is mapped,
//! whatever namespace it lives in; needs CAP_SYS_ADMIN), falling back to `/proc/PID/root/PATH`.
//! A pinned file is shared by every process that maps it (keyed by device and inode), so a
//! thousand workers of one binary hold one descriptor for it.
use std::{
    collections::{HashMap, VecDeque},
    fs::File,
    os::fd::AsRawFd,
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock, Weak},
};

use procfs_core::{
    FromBufRead, FromRead,
    process::{MMPermissions, MMapPath, MemoryMap, MemoryMaps, Stat, Status},
};

use crate::tracker::hash::FastMap;

/// A process across pid reuse: its pid and its start time (CLOCK_MONOTONIC ns, as the kernel
/// events carry it in [`crate::event::Owner::process_start_ns`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessKey {
    pub pid: u32,
    pub start_ns: u64,
}

/// A file's identity as `/proc/PID/maps` gives it: device (major, minor) and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    pub major: i32,
    pub minor: i32,
    pub inode: u64,
}

/// A mapped file kept open, so it can be read whatever happens to the process or the path.
#[derive(Debug)]
pub struct PinnedFile {
    file: File,
    pub id: FileId,
}

impl PinnedFile {
    /// A path that opens this very file from this process (`/proc/self/fd/N`): what blazesym
    /// is given, so it reads the pinned inode rather than whatever the original path holds now.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    pub fn file(&self) -> &File {
        &self.file
    }
}

/// What backs an executable mapping.
#[derive(Clone, Debug)]
pub enum Region {
    /// A file: `path` as the process sees it (its module name), `file` pinned when it could be.
    File {
        path: String,
        file: Option<Arc<PinnedFile>>,
    },
    /// The kernel's vDSO.
    Vdso,
    /// Anonymous executable memory (JIT code), or a pseudo-path such as `[anon:...]`.
    Anonymous,
}

/// One executable mapping of a process.
#[derive(Clone, Debug)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    pub region: Region,
}

/// Everything symbolizing a process's stacks needs, captured while it ran.
#[derive(Debug)]
pub struct ProcessImage {
    pub key: ProcessKey,
    /// Executable mappings, sorted by address.
    pub mappings: Vec<Mapping>,
    /// The main executable's path as the process sees it, when known.
    pub exe: Option<String>,
    /// The process's pid inside its own pid namespace: perf maps are named after it.
    pub namespaced_pid: u32,
    /// The perf map (`/tmp/perf-NSPID.map` in the process's root), opened at capture if it
    /// existed then; JIT runtimes keep appending to it.
    pub perf_map: Option<File>,
}

impl ProcessImage {
    /// The mapping that holds `address`.
    pub fn mapping_at(&self, address: u64) -> Option<&Mapping> {
        let index = self
            .mappings
            .partition_point(|mapping| mapping.start <= address);
        let mapping = self.mappings.get(index.checked_sub(1)?)?;
        (address < mapping.end).then_some(mapping)
    }

    /// Where this process's perf map lives, seen from the host (through its root).
    pub fn perf_map_path(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/root/tmp/perf-{}.map",
            self.key.pid, self.namespaced_pid
        ))
    }
}

/// Why a process could not be captured.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("process {pid} exited before its mappings could be read")]
    Gone { pid: u32 },
    #[error(
        "pid {pid} now belongs to another process (started at {found_ns} ns, not {expected_ns} ns)"
    )]
    PidReused {
        pid: u32,
        expected_ns: u64,
        found_ns: u64,
    },
    #[error("reading /proc/{pid}/{what}: {source}")]
    Proc {
        pid: u32,
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Files pinned for the processes captured so far, shared by device and inode.
#[derive(Default)]
pub struct Pins {
    files: Mutex<HashMap<FileId, Weak<PinnedFile>>>,
}

impl Pins {
    fn pin(
        &self,
        pid: u32,
        mapping: &procfs_core::process::MemoryMap,
        path: &str,
    ) -> Option<Arc<PinnedFile>> {
        let id = FileId {
            major: mapping.dev.0,
            minor: mapping.dev.1,
            inode: mapping.inode,
        };
        let mut files = self
            .files
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(pinned) = files.get(&id).and_then(Weak::upgrade) {
            return Some(pinned);
        }
        let (start, end) = mapping.address;
        let file = File::open(format!("/proc/{pid}/map_files/{start:x}-{end:x}"))
            .or_else(|_| File::open(format!("/proc/{pid}/root{path}")))
            .ok()?;
        let pinned = Arc::new(PinnedFile { file, id });
        files.retain(|_, weak| weak.strong_count() > 0);
        files.insert(id, Arc::downgrade(&pinned));
        Some(pinned)
    }
}

/// Reads `key`'s executable mappings and pins their files.
pub fn capture(key: ProcessKey, pins: &Pins) -> Result<ProcessImage, CaptureError> {
    let pid = key.pid;
    let proc_error = |what: &'static str| {
        move |err: std::io::Error| {
            if err.kind() == std::io::ErrorKind::NotFound || err.raw_os_error() == Some(libc::ESRCH)
            {
                CaptureError::Gone { pid }
            } else {
                CaptureError::Proc {
                    pid,
                    what,
                    source: err.into(),
                }
            }
        }
    };
    let stat = std::fs::read(format!("/proc/{pid}/stat")).map_err(proc_error("stat"))?;
    let stat = crate::inventory::checked_stat_line(&stat).map_err(std::io::Error::other).map_err(proc_error("stat"))?;
    let stat = Stat::from_read(stat).map_err(|err| CaptureError::Proc {
        pid,
        what: "stat",
        source: err.into(),
    })?;
    check_start_time(key, stat.starttime)?;

    let maps = std::fs::read(format!("/proc/{pid}/maps")).map_err(proc_error("maps"))?;
    let maps = executable_maps(&maps).map_err(|err| CaptureError::Proc {
        pid,
        what: "maps",
        source: err.into(),
    })?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|path| strip_deleted(&path.to_string_lossy()).to_string());
    let namespaced_pid = File::open(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| Status::from_read(status).ok())
        .and_then(|status| status.nspid.and_then(|ids| ids.last().copied()))
        .and_then(|id| u32::try_from(id).ok())
        .unwrap_or(pid);

    let mut mappings = Vec::new();
    for mapping in maps {
        let region = match &mapping.pathname {
            MMapPath::Path(path) => {
                let path = strip_deleted(&path.to_string_lossy()).to_string();
                let file = pins.pin(pid, &mapping, &path);
                Region::File { path, file }
            }
            MMapPath::Vdso => Region::Vdso,
            _ => Region::Anonymous,
        };
        mappings.push(Mapping {
            start: mapping.address.0,
            end: mapping.address.1,
            offset: mapping.offset,
            region,
        });
    }
    mappings.sort_by_key(|mapping| mapping.start);
    let mut image = ProcessImage {
        key,
        mappings,
        exe,
        namespaced_pid,
        perf_map: None,
    };
    image.perf_map = File::open(image.perf_map_path()).ok();
    Ok(image)
}

/// The executable mappings of a `/proc/PID/maps` text, in its order: all a stack can point into.
pub fn executable_maps(text: &[u8]) -> procfs_core::ProcResult<Vec<MemoryMap>> {
    let maps = MemoryMaps::from_buf_read(without_malformed_sysv(text).as_slice())?;
    Ok(maps.into_iter().filter(|mapping| mapping.perms.contains(MMPermissions::EXECUTE)).collect())
}

/// The maps text without lines naming a SysV segment in a form the kernel never writes
/// (`/SYSV` and 8 hex digits): procfs-core slices that name without checking its length. Such a
/// segment is shared memory, never code a stack points into.
fn without_malformed_sysv(text: &[u8]) -> Vec<u8> {
    let mut kept = Vec::with_capacity(text.len());
    for line in text.split_inclusive(|&byte| byte == b'\n') {
        let malformed = line.windows(5).position(|window| window == b"/SYSV").is_some_and(|at| {
            let digits = line.get(at + 5..at + 13);
            !digits.is_some_and(|digits| digits.iter().all(u8::is_ascii_hexdigit))
        });
        if !malformed {
            kept.extend_from_slice(line);
        }
    }
    kept
}

fn strip_deleted(path: &str) -> &str {
    path.strip_suffix(" (deleted)").unwrap_or(path)
}

/// `/proc/PID/stat` gives the start time in clock ticks of CLOCK_BOOTTIME; the events give it in
/// CLOCK_MONOTONIC ns. The two clocks differ by the time the machine spent suspended, read now.
/// A mismatch beyond two ticks means the pid was reused.
fn check_start_time(key: ProcessKey, start_ticks: u64) -> Result<(), CaptureError> {
    // SAFETY: sysconf has no preconditions.
    let ticks_per_s = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1);
    let suspended_ns =
        clock_ns(libc::CLOCK_BOOTTIME).saturating_sub(clock_ns(libc::CLOCK_MONOTONIC));
    let found_ns =
        (start_ticks.saturating_mul(1_000_000_000) / ticks_per_s).saturating_sub(suspended_ns);
    if found_ns.abs_diff(key.start_ns) > start_tolerance_ns(ticks_per_s) {
        return Err(CaptureError::PidReused {
            pid: key.pid,
            expected_ns: key.start_ns,
            found_ns,
        });
    }
    Ok(())
}

/// How far apart a start time read from `/proc` (whole clock ticks) and the kernel's (ns) may be
/// for one process.
fn start_tolerance_ns(ticks_per_s: u64) -> u64 {
    2 * 1_000_000_000 / ticks_per_s + 1_000_000
}

/// Whether `key.pid` still names the process that started at `key.start_ns`.
pub fn is_running(key: ProcessKey) -> bool {
    // SAFETY: sysconf has no preconditions.
    let ticks_per_s = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100).max(1);
    process_start_ns(key.pid).is_some_and(|found| found.abs_diff(key.start_ns) <= start_tolerance_ns(ticks_per_s))
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for clock_gettime to fill.
    unsafe { libc::clock_gettime(clock, &mut now) };
    (now.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec as u64)
}

/// A process's start time as the kernel events give it (CLOCK_MONOTONIC ns), read from
/// `/proc/PID/stat`: for callers (and tests) that know a pid but have no event for it.
pub fn process_start_ns(pid: u32) -> Option<u64> {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    let stat = Stat::from_read(crate::inventory::checked_stat_line(&stat).ok()?).ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks_per_s = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()?
        .max(1);
    let suspended_ns =
        clock_ns(libc::CLOCK_BOOTTIME).saturating_sub(clock_ns(libc::CLOCK_MONOTONIC));
    Some((stat.starttime.saturating_mul(1_000_000_000) / ticks_per_s).saturating_sub(suspended_ns))
}

/// One capture slot per process: filled once, by whichever thread gets there first (the
/// capture thread at first sight, or the symbolizer if it asks before that).
pub type Slot = OnceLock<Option<Arc<ProcessImage>>>;

/// The processes noted so far and their captures, bounded: past `capacity` the oldest are
/// forgotten (their files unpinned once nothing else maps them).
pub struct Registry {
    inner: Mutex<RegistryInner>,
    pins: Pins,
    capacity: usize,
}

struct RegistryInner {
    slots: FastMap<ProcessKey, Arc<Slot>>,
    order: VecDeque<ProcessKey>,
}

/// What [`Registry::slot`] found.
pub enum SlotState {
    New(Arc<Slot>),
    Known(Arc<Slot>),
}

impl Registry {
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(RegistryInner {
                slots: FastMap::default(),
                order: VecDeque::new(),
            }),
            pins: Pins::default(),
            capacity: capacity.max(1),
        }
    }

    /// The slot for `key`, created empty when the process was never seen.
    pub fn slot(&self, key: ProcessKey) -> SlotState {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(slot) = inner.slots.get(&key) {
            return SlotState::Known(Arc::clone(slot));
        }
        let slot = Arc::new(Slot::new());
        inner.slots.insert(key, Arc::clone(&slot));
        inner.order.push_back(key);
        while inner.order.len() > self.capacity {
            if let Some(oldest) = inner.order.pop_front() {
                inner.slots.remove(&oldest);
            }
        }
        SlotState::New(slot)
    }

    /// Captures `key` again (a process that exec'd or loaded a library since its first capture)
    /// and keeps the new capture if the process is still there.
    pub fn recapture(&self, key: ProcessKey) -> Option<Arc<ProcessImage>> {
        let image = Arc::new(capture(key, &self.pins).ok()?);
        let slot = Arc::new(Slot::new());
        let _ = slot.set(Some(Arc::clone(&image)));
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if inner.slots.insert(key, slot).is_none() {
            inner.order.push_back(key);
        }
        Some(image)
    }

    /// Fills `slot` by capturing `key` now, unless it is filled already (or being filled, in
    /// which case this waits for it). Returns the image and, when this call did the capture, its
    /// outcome.
    pub fn fill(
        &self,
        key: ProcessKey,
        slot: &Slot,
    ) -> (Option<Arc<ProcessImage>>, Option<Result<(), CaptureError>>) {
        let mut outcome = None;
        let image = slot.get_or_init(|| match capture(key, &self.pins) {
            Ok(image) => {
                outcome = Some(Ok(()));
                Some(Arc::new(image))
            }
            Err(err) => {
                outcome = Some(Err(err));
                None
            }
        });
        (image.clone(), outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_maps_line_naming_a_short_sysv_segment_is_left_out_not_a_panic() {
        // Found by the proc fuzz target: `/SYSV` without its 8 hex digits.
        let maps = b"558d363fd000-558f363fe000 r-xp 00000000 fe:00 18504    /usr/bin/python3.11\n\
                     558f363fe000-558f362ff000 r-xp 00001000 fe:00 18504  /SYSV \n\
                     7f0000000000-7f0000001000 rw-s 00000000 00:01 7  /SYSV0000abcd (deleted)\n";
        let executable = executable_maps(maps).unwrap();
        assert_eq!(executable.len(), 1, "{executable:?}");
    }
}
