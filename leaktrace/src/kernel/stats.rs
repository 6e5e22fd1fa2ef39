//! What the probes cost, from the kernel's own accounting: run time and run count per program
//! (BPF run-time statistics, kept while a [`RunTimeStats`] lives), the memory each of their
//! maps holds (`memlock` in the map's fdinfo), and how many sockets the kernel side tracks.
//! The benchmarks read these; they are cheap enough to read at any time.
use std::{
    collections::BTreeSet,
    fs,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
};

use aya::{
    maps::{Map, MapInfo},
    sys::{Stats, enable_stats},
};
use aya_obj::generated::{bpf_attr, bpf_cmd};
use serde::{Deserialize, Serialize};

use super::loader::Tracer;

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error(
        "cannot turn on BPF run-time statistics (BPF_ENABLE_STATS, Linux 5.8+): {0}\n\
         hint: it needs CAP_SYS_ADMIN; `sysctl kernel.bpf_stats_enabled=1` is the manual way"
    )]
    Enable(#[source] aya::sys::SyscallError),
    #[error("cannot read the info of program {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("cannot read the info of BPF map id {id}: {message}")]
    Map { id: u32, message: String },
    #[error("cannot count the entries of map {map}: {message}")]
    Count { map: &'static str, message: String },
}

/// BPF run-time statistics, on for every program of the host while this lives. The kernel
/// counts the holders (and the `kernel.bpf_stats_enabled` sysctl), so dropping it, or this
/// process dying, puts things back as they were. While on, every BPF program run costs two
/// more clock reads: turn it on only to measure.
pub struct RunTimeStats {
    _holder: OwnedFd,
}

impl RunTimeStats {
    pub fn enable() -> Result<Self, StatsError> {
        Ok(Self {
            _holder: enable_stats(Stats::RunTime).map_err(StatsError::Enable)?,
        })
    }
}

/// One attached program's cost so far. `run_time_ns` and `run_count` advance only while
/// run-time statistics are on ([`RunTimeStats`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramStats {
    pub program: String,
    pub hook: String,
    pub run_time_ns: u64,
    pub run_count: u64,
    /// Runs the kernel skipped because the program was already running on that CPU.
    pub nested_skips: u64,
}

/// The kernel memory a map of the probes holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapMemory {
    pub name: String,
    pub max_entries: u32,
    /// `memlock` from the map's fdinfo: what the kernel charges for it.
    pub memlock_bytes: u64,
}

/// The socket map: one entry per tracked socket (both ends of a loopback connection).
const SOCKETS_MAP: &str = "SOCKETS";

impl Tracer {
    /// Run time, run count and nested skips of every attached program.
    pub fn program_stats(&self) -> Result<Vec<ProgramStats>, StatsError> {
        self.hooks()
            .iter()
            .filter_map(|hook| {
                self.ebpf
                    .program(hook.program)
                    .map(|program| (hook, program))
            })
            .map(|(hook, program)| {
                let error = |source| StatsError::Program {
                    program: hook.program,
                    source,
                };
                let info = program.info().map_err(error)?;
                let nested_skips = program
                    .fd()
                    .ok()
                    .and_then(|fd| super::prog_info::recursion_misses(fd.as_fd()).ok())
                    .unwrap_or(0);
                Ok(ProgramStats {
                    program: hook.program.to_string(),
                    hook: hook.hook.clone(),
                    run_time_ns: info.run_time().as_nanos() as u64,
                    run_count: info.run_count(),
                    nested_skips,
                })
            })
            .collect()
    }

    /// The memory of every map the attached programs use (the ring buffer, the socket map,
    /// the counters, the filters, the switch and the load-time configuration).
    pub fn map_memory(&self) -> Result<Vec<MapMemory>, StatsError> {
        let mut ids = BTreeSet::new();
        for hook in self.hooks() {
            let Some(program) = self.ebpf.program(hook.program) else {
                continue;
            };
            let error = |source| StatsError::Program {
                program: hook.program,
                source,
            };
            ids.extend(
                program
                    .info()
                    .map_err(error)?
                    .map_ids()
                    .map_err(error)?
                    .unwrap_or_default(),
            );
        }
        ids.into_iter()
            .map(|id| {
                let error = |message: String| StatsError::Map { id, message };
                let info = MapInfo::from_id(id).map_err(|err| error(err.to_string()))?;
                let fd = info.fd().map_err(|err| error(err.to_string()))?;
                Ok(MapMemory {
                    name: info.name_as_str().unwrap_or_default().to_string(),
                    max_entries: info.max_entries(),
                    memlock_bytes: fdinfo_field(fd.as_fd(), "memlock").map_err(error)?,
                })
            })
            .collect()
    }

    /// How many sockets the kernel side tracks now (entries of its socket map). Walks the map
    /// key by key: about a second per million entries.
    pub fn tracked_sockets(&self) -> Result<u64, StatsError> {
        let error = |message: String| StatsError::Count {
            map: SOCKETS_MAP,
            message,
        };
        let Some(Map::HashMap(data)) = self.ebpf.map(SOCKETS_MAP) else {
            return Err(error(
                "missing from the eBPF object, or not a hash map".into(),
            ));
        };
        let fd = data.fd().as_fd();
        let mut count = 0;
        let mut key: Option<u64> = None;
        while let Some(next) = next_key(fd, key.as_ref()).map_err(|err| error(err.to_string()))? {
            count += 1;
            key = Some(next);
        }
        Ok(count)
    }
}

/// `BPF_MAP_GET_NEXT_KEY` on a map with `u64` keys: the key after `key` (the first without
/// one), `None` at the end.
fn next_key(map: BorrowedFd<'_>, key: Option<&u64>) -> std::io::Result<Option<u64>> {
    let mut next: u64 = 0;
    // SAFETY: all-zero is a valid bpf_attr (plain integers and unions of them).
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.__bindgen_anon_2.map_fd = map.as_raw_fd() as u32;
    attr.__bindgen_anon_2.key = key.map_or(0, |k| std::ptr::from_ref(k) as u64);
    attr.__bindgen_anon_2.__bindgen_anon_1.next_key = (&raw mut next) as u64;
    // SAFETY: the kernel reads 8 bytes at `key` and writes 8 bytes at `next` (the map's key
    // size, checked by the caller's choice of map).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_MAP_GET_NEXT_KEY as libc::c_long,
            &raw mut attr,
            size_of::<bpf_attr>(),
        )
    };
    if rc == 0 {
        return Ok(Some(next));
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ENOENT) {
        Ok(None)
    } else {
        Err(err)
    }
}

/// A numeric field of `/proc/self/fdinfo/<fd>` (`memlock:\t4096`).
fn fdinfo_field(fd: BorrowedFd<'_>, field: &str) -> Result<u64, String> {
    let path = format!("/proc/self/fdinfo/{}", fd.as_raw_fd());
    let text = fs::read_to_string(&path).map_err(|err| format!("{path}: {err}"))?;
    parse_fdinfo_field(&text, field).ok_or_else(|| format!("{path} has no numeric `{field}` line"))
}

fn parse_fdinfo_field(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name.trim() == field)
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_field_of_a_map_fdinfo() {
        let fdinfo = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1041\nmap_type:\t1\nkey_size:\t8\n\
                      value_size:\t24\nmax_entries:\t131072\nmap_flags:\t0x0\nmap_extra:\t0x0\n\
                      memlock:\t13644544\nmap_id:\t57\nfrozen:\t0\n";
        assert_eq!(parse_fdinfo_field(fdinfo, "memlock"), Some(13_644_544));
        assert_eq!(parse_fdinfo_field(fdinfo, "max_entries"), Some(131_072));
        assert_eq!(
            parse_fdinfo_field(fdinfo, "map_flags"),
            None,
            "hex is not read as decimal"
        );
        assert_eq!(parse_fdinfo_field(fdinfo, "owner_jited"), None);
    }
}
