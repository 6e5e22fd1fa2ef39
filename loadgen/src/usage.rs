//! What a run cost and how TCP fared: this process's CPU time (getrusage, all threads) and the
//! TCP counters of its network namespace (`/proc/self/net/{snmp,netstat}`), before and after.
use std::{fs, time::Duration};

use anyhow::{Context, Result, bail};
use serde::Serialize;

#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTime {
    pub user: Duration,
    pub sys: Duration,
}

impl CpuTime {
    pub fn of_process() -> Result<Self> {
        // SAFETY: getrusage fills the zeroed struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
            return Err(std::io::Error::last_os_error()).context("getrusage(RUSAGE_SELF)");
        }
        let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        Ok(Self {
            user: time(usage.ru_utime),
            sys: time(usage.ru_stime),
        })
    }

    pub fn since(self, before: Self) -> Self {
        Self {
            user: self.user.saturating_sub(before.user),
            sys: self.sys.saturating_sub(before.sys),
        }
    }
}

/// TCP counters of the current network namespace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TcpCounters {
    pub active_opens: u64,
    pub passive_opens: u64,
    /// Connections dropped because an accept queue was full (each costs a 1 s SYN retry).
    pub listen_overflows: u64,
    pub syn_retransmits: u64,
}

impl TcpCounters {
    pub fn read() -> Result<Self> {
        let snmp =
            fs::read_to_string("/proc/self/net/snmp").context("reading /proc/self/net/snmp")?;
        let netstat = fs::read_to_string("/proc/self/net/netstat")
            .context("reading /proc/self/net/netstat")?;
        Ok(Self {
            active_opens: counter(&snmp, "Tcp", "ActiveOpens")?,
            passive_opens: counter(&snmp, "Tcp", "PassiveOpens")?,
            listen_overflows: counter(&netstat, "TcpExt", "ListenOverflows")?,
            syn_retransmits: counter(&netstat, "TcpExt", "TCPSynRetrans")?,
        })
    }

    pub fn since(self, before: Self) -> Self {
        Self {
            active_opens: self.active_opens.saturating_sub(before.active_opens),
            passive_opens: self.passive_opens.saturating_sub(before.passive_opens),
            listen_overflows: self
                .listen_overflows
                .saturating_sub(before.listen_overflows),
            syn_retransmits: self.syn_retransmits.saturating_sub(before.syn_retransmits),
        }
    }
}

/// A counter of a `/proc/net/snmp`-style table: a line of names, then a line of values, both
/// prefixed with `group:`.
fn counter(table: &str, group: &str, name: &str) -> Result<u64> {
    let prefix = format!("{group}:");
    let mut lines = table.lines().filter(|line| line.starts_with(&prefix));
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        let position = names.split_whitespace().position(|n| n == name);
        if let Some(value) = position.and_then(|p| values.split_whitespace().nth(p)) {
            return value
                .parse()
                .with_context(|| format!("{group}:{name} is not a number: {value:?}"));
        }
    }
    bail!("no {group}:{name} counter in this kernel's tables")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNMP: &str = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                        Tcp: RtoAlgorithm RtoMin ActiveOpens PassiveOpens\nTcp: 1 200 10068 10067\n";

    #[test]
    fn reads_a_counter_by_name() {
        assert_eq!(counter(SNMP, "Tcp", "ActiveOpens").unwrap(), 10068);
        assert_eq!(counter(SNMP, "Tcp", "PassiveOpens").unwrap(), 10067);
        assert_eq!(counter(SNMP, "Ip", "DefaultTTL").unwrap(), 64);
        let err = counter(SNMP, "Tcp", "Nope").unwrap_err().to_string();
        assert!(err.contains("Tcp:Nope"), "{err}");
    }

    #[test]
    fn a_connection_counts_as_an_active_and_a_passive_open() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let before = TcpCounters::read().unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let _server = listener.accept().unwrap();
        let delta = TcpCounters::read().unwrap().since(before);
        // Other processes may open connections too: at least ours.
        assert!(
            delta.active_opens >= 1 && delta.passive_opens >= 1,
            "{delta:?}"
        );
    }
}
