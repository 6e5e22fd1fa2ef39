//! The kernel's record of which runtimes have processes registered (`RUNTIMES_REGISTERED`):
//! the probes look an opening process up in a runtime's process map only once its bit is set,
//! so that hosts without Go ancestry or Python frames in use skip those lookups.
use aya::maps::Array;

use super::loader::Tracer;

const RUNTIMES_MAP: &str = "RUNTIMES_REGISTERED";

impl Tracer {
    /// Sets `runtime`'s bit (a `leaktrace_common::runtimes` bit) before its first process is put
    /// in its map. Bits stay set: a bit with no process left only costs the probes a lookup.
    pub(super) fn mark_runtime_registered(&mut self, runtime: u32) -> Result<(), String> {
        let failed = |err: &dyn std::fmt::Display| format!("map {RUNTIMES_MAP}: {err}");
        let map = self.ebpf.map_mut(RUNTIMES_MAP).ok_or_else(|| failed(&"missing from the eBPF object"))?;
        let mut bits: Array<_, u32> = Array::try_from(map).map_err(|err| failed(&err))?;
        let now = bits.get(&0, 0).map_err(|err| failed(&err))?;
        if now & runtime == 0 {
            bits.set(0, now | runtime, 0).map_err(|err| failed(&err))?;
        }
        Ok(())
    }
}
