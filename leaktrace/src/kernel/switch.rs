//! The probes' runtime switch: pause them while they stay attached, and resume them. Paused,
//! every probe returns at its first instruction (a one-entry array lookup the verifier
//! inlines), so what remains is the kernel's cost of calling an attached program. That is the
//! benchmark's "probes loaded but disabled" row, and a way to stop observing without
//! unloading.
use aya::maps::Array;

use super::loader::Tracer;

/// The kernel programs' switch map: slot 0 non-zero means paused (`leaktrace-ebpf/src/maps.rs`).
const SWITCH_MAP: &str = "PAUSED";

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot {action} the probes: map {SWITCH_MAP}: {message} \
     (userspace and kernel programs out of step?)"
)]
pub struct SwitchError {
    action: &'static str,
    message: String,
}

impl Tracer {
    /// Resumes (`true`) or pauses (`false`) every probe, on every CPU, while they stay attached.
    ///
    /// A pause is a gap in what leaktrace sees: nothing is reported or counted while paused.
    /// Sockets that changed state meanwhile show it once resumed (`transitions_missed`, or a
    /// connection whose end was never seen); sockets born meanwhile are not tracked.
    pub fn set_probes_enabled(&mut self, enabled: bool) -> Result<(), SwitchError> {
        let action = if enabled { "resume" } else { "pause" };
        let error = |message: String| SwitchError { action, message };
        let map = self
            .ebpf
            .map_mut(SWITCH_MAP)
            .ok_or_else(|| error("missing from the eBPF object".into()))?;
        let mut switch: Array<_, u32> =
            Array::try_from(map).map_err(|err| error(err.to_string()))?;
        switch
            .set(0, u32::from(!enabled), 0)
            .map_err(|err| error(err.to_string()))
    }

    /// Whether the probes run (`false` while paused by [`set_probes_enabled`](Self::set_probes_enabled)).
    pub fn probes_enabled(&self) -> Result<bool, SwitchError> {
        let error = |message: String| SwitchError {
            action: "read the switch of",
            message,
        };
        let map = self
            .ebpf
            .map(SWITCH_MAP)
            .ok_or_else(|| error("missing from the eBPF object".into()))?;
        let switch: Array<_, u32> = Array::try_from(map).map_err(|err| error(err.to_string()))?;
        Ok(switch.get(&0, 0).map_err(|err| error(err.to_string()))? == 0)
    }
}
