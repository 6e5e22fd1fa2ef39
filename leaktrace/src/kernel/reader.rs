//! Reading the ring buffer in batches: the probes wake the reader only when the buffer fills
//! past a threshold, so it also drains on a timer. Also the per-CPU counters, and the
//! accounting that must balance: produced = received + dropped.
use std::time::Duration;

use aya::maps::{MapData, PerCpuArray, RingBuf};
use leaktrace_common::Counter;
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;

use super::loader::Tracer;
use crate::{decode::decode, event::Event};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("waiting on the ring buffer failed: {0}")]
    Poll(#[source] std::io::Error),
    #[error("reading the kernel counters failed: {0}")]
    Counters(String),
}

pub(super) struct Reader {
    ring: AsyncFd<RingBuf<MapData>>,
    drain_interval: Duration,
    received: u64,
    undecodable: u64,
}

impl Reader {
    pub(super) fn new(ring: AsyncFd<RingBuf<MapData>>, drain_interval: Duration) -> Self {
        Self { ring, drain_interval, received: 0, undecodable: 0 }
    }

    fn drain(&mut self, out: &mut Vec<Event>) {
        let ring = self.ring.get_mut();
        while let Some(record) = ring.next() {
            self.received += 1;
            match decode(&record) {
                Ok(event) => out.push(event),
                Err(err) => {
                    self.undecodable += 1;
                    if self.undecodable <= 10 {
                        log::warn!("undecodable record: {err}");
                    }
                }
            }
        }
    }
}

/// The kernel's counters, summed over CPUs, with what userspace received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KernelCounters {
    /// Records the probes tried to write.
    pub produced: u64,
    /// Records taken off the ring buffer.
    pub received: u64,
    /// Records lost because the ring buffer was full.
    pub lost: u64,
    /// Received records that did not decode (counted in `received`).
    pub undecodable: u64,
    /// Sockets not tracked because the kernel socket map was full.
    pub socket_map_full: u64,
    /// Opens reported without a user stack.
    pub stack_failures: u64,
    /// accept() of a socket born before tracing started.
    pub accept_untracked: u64,
    /// accept() whose fd could not be followed to its socket.
    pub accept_unresolved: u64,
    /// Connections closed before any process accepted them.
    pub closed_before_accept: u64,
    /// Transitions of tracked sockets that no attachment saw (a gap in a socket's states).
    pub transitions_missed: u64,
    /// Runs the kernel skipped because the same program was already running on that CPU
    /// (`recursion_misses`, summed over programs). With both state attachments these are
    /// covered by the other one; `transitions_missed` counts what was really lost.
    pub nested_skips: u64,
    /// Goroutine creations recorded (with the spawner's stack) in Go processes with goroutine
    /// ancestry attached.
    pub goroutines_recorded: u64,
    /// Goroutine creations seen there but not recorded (a runtime structure unreadable, or the
    /// stack walk failed): their connects lack that hop.
    pub goroutines_unrecorded: u64,
    /// Opens in registered CPython processes whose thread's Python frames were taken.
    pub python_walks: u64,
    /// Opens there whose Python frames could not be taken (the thread not found, a read
    /// failed...): they carry the native stack alone.
    pub python_walks_failed: u64,
}

impl KernelCounters {
    /// `produced == received + lost`, which holds once the probes are detached and the buffer
    /// drained (while they run, records in flight make it briefly uneven).
    pub fn balanced(&self) -> bool {
        self.produced == self.received + self.lost
    }
}

impl Tracer {
    /// Waits for the next batch (a wakeup, or the drain interval passing) and appends its
    /// events to `out`.
    pub async fn next_batch(&mut self, out: &mut Vec<Event>) -> Result<(), ReadError> {
        let interval = self.reader.drain_interval;
        tokio::select! {
            ready = self.reader.ring.readable_mut() => {
                let mut guard = ready.map_err(ReadError::Poll)?;
                guard.clear_ready();
            }
            () = tokio::time::sleep(interval) => {}
        }
        self.reader.drain(out);
        Ok(())
    }

    /// Drains whatever is in the buffer now, without waiting.
    pub fn drain_now(&mut self, out: &mut Vec<Event>) {
        self.reader.drain(out);
    }

    pub fn counters(&self) -> Result<KernelCounters, ReadError> {
        let map = self.ebpf.map("COUNTERS").ok_or_else(|| ReadError::Counters("map COUNTERS missing".into()))?;
        let counters: PerCpuArray<_, u64> = PerCpuArray::try_from(map).map_err(|e| ReadError::Counters(e.to_string()))?;
        let sum = |counter: Counter| -> Result<u64, ReadError> {
            let values = counters.get(&(counter as u32), 0).map_err(|e| ReadError::Counters(e.to_string()))?;
            Ok(values.iter().sum())
        };
        Ok(KernelCounters {
            produced: sum(Counter::EventsProduced)?,
            received: self.reader.received,
            lost: sum(Counter::EventsDropped)?,
            undecodable: self.reader.undecodable,
            socket_map_full: sum(Counter::SocketMapFull)?,
            stack_failures: sum(Counter::StackFailed)?,
            accept_untracked: sum(Counter::AcceptUntracked)?,
            accept_unresolved: sum(Counter::AcceptUnresolved)?,
            closed_before_accept: sum(Counter::ClosedBeforeAccept)?,
            transitions_missed: sum(Counter::TransitionsMissed)?,
            nested_skips: self.nested_skips(),
            goroutines_recorded: sum(Counter::GoroutinesRecorded)?,
            goroutines_unrecorded: sum(Counter::GoroutinesUnrecorded)?,
            python_walks: sum(Counter::PythonWalks)?,
            python_walks_failed: sum(Counter::PythonWalksFailed)?,
        })
    }

    /// Detaches the probes, drains what they wrote, and returns the final counts, which
    /// balance exactly.
    pub fn finish(mut self, out: &mut Vec<Event>) -> Result<KernelCounters, ReadError> {
        self.detach_all();
        self.reader.drain(out);
        self.counters()
    }
}
