//! Processes as `/proc` names them, and how their start times compare with the kernel events'.
//!
//! The kernel events name a process by `(pid, process_start_ns)`, where `process_start_ns` is
//! `task->group_leader->start_time`: CLOCK_MONOTONIC nanoseconds, exact. Field 22 of
//! `/proc/PID/stat` is the same leader's `start_boottime` (CLOCK_BOOTTIME, which is MONOTONIC
//! plus the time the machine spent suspended before the process started), in clock ticks
//! (`sysconf(_SC_CLK_TCK)`, USER_HZ: 100 on mainstream architectures, so 10 ms), rounded down.
//! [`ProcessRef::start_time_ns`] is that tick count in nanoseconds since boot.
//!
//! So for one process, `proc_start_ns` lies between `kernel_start_ns - 1 tick` and
//! `kernel_start_ns + suspended_ns` (0 on a machine that never suspended). [`StartClock`]
//! checks that window, widened by [`START_TOLERANCE_TICKS`]. Two processes with one pid and
//! starts that close would need the pid space to wrap within a few ticks. A process that
//! started before a suspend matches only loosely: the window then spans everything suspended
//! since boot, as /proc cannot say how much of it came before the process.
use procfs_core::{FromRead, process::Stat};
use rustix::time::{ClockId, clock_gettime};

/// A process that holds a socket.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProcessRef {
    pub pid: u32,
    pub comm: String,
    /// The process's start, from `/proc/PID/stat`: nanoseconds since boot (CLOCK_BOOTTIME), at
    /// clock-tick granularity. Compare with a kernel `process_start_ns` through
    /// [`StartClock::same_start`], never with `==`.
    pub start_time_ns: u64,
}

/// Rounding slack, in ticks, on each side of the window [`StartClock::same_start`] accepts.
pub const START_TOLERANCE_TICKS: u64 = 2;

/// What is needed to turn `/proc` start ticks into nanoseconds and match them with kernel
/// start times: the tick length and how long the machine has been suspended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartClock {
    tick_ns: u64,
    suspended_ns: u64,
}

impl StartClock {
    /// This machine's clock now: `_SC_CLK_TCK` and CLOCK_BOOTTIME - CLOCK_MONOTONIC.
    pub fn now() -> Self {
        let monotonic = now_ns(ClockId::Monotonic);
        let boottime = now_ns(ClockId::Boottime);
        Self::new(
            rustix::param::clock_ticks_per_second(),
            boottime.saturating_sub(monotonic),
        )
    }

    pub fn new(ticks_per_second: u64, suspended_ns: u64) -> Self {
        Self {
            tick_ns: 1_000_000_000 / ticks_per_second.max(1),
            suspended_ns,
        }
    }

    pub fn tick_ns(&self) -> u64 {
        self.tick_ns
    }

    /// Time spent suspended since boot.
    pub fn suspended_ns(&self) -> u64 {
        self.suspended_ns
    }

    pub fn ticks_to_ns(&self, ticks: u64) -> u64 {
        ticks.saturating_mul(self.tick_ns)
    }

    /// Whether a `/proc` start time ([`ProcessRef::start_time_ns`]) and a kernel event's
    /// `process_start_ns` can denote the same process start.
    pub fn same_start(&self, proc_start_ns: u64, kernel_start_ns: u64) -> bool {
        let slack = START_TOLERANCE_TICKS * self.tick_ns;
        let earliest = kernel_start_ns.saturating_sub(slack);
        let latest = kernel_start_ns
            .saturating_add(self.suspended_ns)
            .saturating_add(slack);
        (earliest..=latest).contains(&proc_start_ns)
    }
}

/// A clock's reading in nanoseconds.
pub(super) fn now_ns(clock: ClockId) -> u64 {
    let now = clock_gettime(clock);
    (now.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec as u64)
}

/// `comm` and the start time in ticks from the contents of a `/proc/PID/stat`. The comm may
/// hold spaces and parentheses; procfs-core splits at the last `)`, as the format needs.
pub fn parse_stat(bytes: &[u8]) -> Result<(String, u64), String> {
    let stat = Stat::from_read(checked_stat_line(bytes)?).map_err(|err| err.to_string())?;
    Ok((stat.comm, stat.starttime))
}

/// `bytes` if they begin `PID (` and hold `) ` after that. procfs-core slices the line at its
/// first `(` and last `)` unchecked, and panics when they are out of order or at the edges.
pub(crate) fn checked_stat_line(bytes: &[u8]) -> Result<&[u8], String> {
    let line = String::from_utf8_lossy(bytes);
    let line = line.trim().as_bytes();
    let open = line.iter().position(|&b| b == b'(');
    let close = line.iter().rposition(|&b| b == b')');
    match (open, close) {
        (Some(open), Some(close)) if open >= 1 && line[open - 1] == b' ' && open < close && line.get(close + 1) == Some(&b' ') => {
            Ok(bytes)
        }
        _ => Err("not a /proc/PID/stat line: it does not begin `PID (COMM) `".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `sleep`'s line on kernel 6.18, with its comm and start time replaced.
    fn stat_line(comm: &str, start_ticks: u64) -> String {
        format!(
            "25648 ({comm}) S 25646 25646 1754 0 -1 4194304 139 0 0 0 0 0 0 0 20 0 1 0 {start_ticks} 2990080 412 \
             18446744073709551615 94497626918912 94497626936841 140720627273776 0 0 0 0 6 0 1 0 0 17 0 0 0 0 0 0 \
             94497626950928 94497626952192 94498632884224 140720627280615 140720627280625 140720627280625 \
             140720627281897 0\n"
        )
    }

    #[test]
    fn a_comm_with_spaces_and_parentheses_is_read_whole() {
        for comm in ["sleep", "a b", "x) S 1 (y", "((", ") ) )", ""] {
            let (parsed, ticks) = parse_stat(stat_line(comm, 987654).as_bytes()).unwrap();
            assert_eq!((parsed.as_str(), ticks), (comm, 987654), "comm {comm:?}");
        }
    }

    #[test]
    fn a_stat_line_with_its_parentheses_out_of_order_is_an_error_not_a_panic() {
        // Found by the `proc` fuzz target: procfs-core panicked on each of these.
        for line in [&b"2930cp) 9( R 29298 29298 6748 0"[..], b"(x) S 1", b"1 (x)", b"1 (x)\xc3\xa9 S", b"1\xc3\xa9(x) S 1"] {
            assert!(parse_stat(line).is_err(), "{:?}", String::from_utf8_lossy(line));
        }
        assert!(parse_stat(include_bytes!("../../tests/fixtures/proc-stat-parentheses-out-of-order")).is_err());
    }

    #[test]
    fn a_truncated_line_is_an_error_not_a_guess() {
        let line = stat_line("sleep", 5);
        let cut = line.find(" 0 1 0 ").unwrap();
        assert!(parse_stat(&line.as_bytes()[..cut]).is_err());
        assert!(parse_stat(b"").is_err());
    }

    #[test]
    fn starts_match_within_a_few_ticks_and_the_suspended_time() {
        let clock = StartClock::new(100, 0);
        assert_eq!(clock.tick_ns(), 10_000_000);
        let kernel = 441_628_359_046;
        // /proc rounds down to the tick: 44162 ticks.
        let proc_start = clock.ticks_to_ns(kernel / clock.tick_ns());
        assert!(clock.same_start(proc_start, kernel));
        assert!(clock.same_start(proc_start + 2 * clock.tick_ns(), kernel));
        assert!(
            !clock.same_start(proc_start + 4 * clock.tick_ns(), kernel),
            "a later process with the pid"
        );
        assert!(
            !clock.same_start(proc_start - 3 * clock.tick_ns(), kernel),
            "an earlier one"
        );

        // After 5 s suspended before the process started, /proc reads 5 s later than MONOTONIC.
        let suspended = StartClock::new(100, 5_000_000_000);
        assert!(suspended.same_start(proc_start + 5_000_000_000, kernel));
        assert!(!clock.same_start(proc_start + 5_000_000_000, kernel));
    }

    #[test]
    fn this_process_start_is_at_or_before_now() {
        let bytes = std::fs::read("/proc/self/stat").unwrap();
        let (comm, ticks) = parse_stat(&bytes).unwrap();
        assert!(!comm.is_empty());
        let clock = StartClock::now();
        assert!(clock.ticks_to_ns(ticks) <= now_ns(ClockId::Boottime));
    }
}
