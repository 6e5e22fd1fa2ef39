//! The probes' own messages (rare anomalies: a full socket map, a stack not taken, an accept not
//! followed; `leaktrace-ebpf/src/anomaly.rs`), read off their aya-log ring buffer by a task of
//! their own, off the event path, and handed to the `log` crate at the level the probe gave.
use aya::{Ebpf, EbpfLoader};
use aya_log::EbpfLogger;
use tokio::{
    io::{Interest, unix::AsyncFd},
    task::JoinHandle,
};

/// The global the probes' log macros check before writing a message.
const LEVEL_GLOBAL: &str = "AYA_LOG_LEVEL";

/// Sets the most verbose level the probes write to this process's (`-v` raises it), so that
/// messages nobody would show are not even written.
pub(super) fn set_level(loader: &mut EbpfLoader<'_>) {
    // aya-log's levels number Error = 1 ... Trace = 5, as `log`'s do; 0 (Off) writes nothing.
    // The loader keeps a reference until it loads: a static one.
    const LEVELS: [u8; 6] = [0, 1, 2, 3, 4, 5];
    loader.override_global(LEVEL_GLOBAL, &LEVELS[log::max_level() as usize], false);
}

/// The running reader of the probes' messages; stops it when dropped.
pub(super) struct KernelLog {
    task: JoinHandle<()>,
}

impl Drop for KernelLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts reading the probes' messages on the current tokio runtime. Where that is not possible
/// (an object without the log buffer, a ring buffer the runtime cannot poll), tracing goes on
/// without them, which is said once.
pub(super) fn start(ebpf: &mut Ebpf) -> Option<KernelLog> {
    let logger = match EbpfLogger::init(ebpf) {
        Ok(logger) => logger,
        Err(err) => {
            log::warn!("kernel messages unavailable (anomalies are still counted): {err}");
            return None;
        }
    };
    // SAFETY: the logger owns its ring buffer's fd and keeps it open, unchanged, until it is
    // dropped with the AsyncFd.
    let mut logger = match unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) } {
        Ok(logger) => logger,
        Err(err) => {
            log::warn!("kernel messages unavailable (anomalies are still counted): cannot poll their buffer: {err}");
            return None;
        }
    };
    let task = tokio::spawn(async move {
        loop {
            let Ok(mut ready) = logger.readable_mut().await else { return };
            ready.get_inner_mut().flush();
            ready.clear_ready();
        }
    });
    Some(KernelLog { task })
}
