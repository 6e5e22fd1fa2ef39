//! Reading the call instruction that precedes a return address, to name the caller a
//! frame-pointer walk skipped (see `Engine::lost_caller`). Only direct calls are decoded (their
//! target is in the instruction); indirect calls (through a register, the GOT, a vtable) name
//! nothing and recover nothing.
use std::{fs::File, os::unix::fs::FileExt};

/// The target of the direct call ending at `return_offset` (a file offset in `file`), relative
/// to the return address; `None` when the bytes before it are not a direct call.
pub fn direct_call_target(file: &File, return_offset: u64) -> Option<i64> {
    #[cfg(target_arch = "x86_64")]
    {
        // call rel32: E8 followed by a 32-bit displacement from the next instruction.
        let mut call = [0u8; 5];
        file.read_exact_at(&mut call, return_offset.checked_sub(5)?)
            .ok()?;
        decode_x86_64(&call)
    }
    #[cfg(target_arch = "aarch64")]
    {
        // bl imm26: the word before the return address, displacement from the bl itself.
        let mut call = [0u8; 4];
        file.read_exact_at(&mut call, return_offset.checked_sub(4)?)
            .ok()?;
        decode_aarch64(u32::from_le_bytes(call))
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = (file, return_offset);
        None
    }
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn decode_x86_64(call: &[u8; 5]) -> Option<i64> {
    (call[0] == 0xe8).then(|| i64::from(i32::from_le_bytes([call[1], call[2], call[3], call[4]])))
}

#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
fn decode_aarch64(word: u32) -> Option<i64> {
    if word & 0xfc00_0000 != 0x9400_0000 {
        return None;
    }
    // Sign-extend the 26-bit word displacement, then count from the bl (4 bytes back).
    let words = (((word & 0x03ff_ffff) << 6) as i32) >> 6;
    Some(i64::from(words) * 4 - 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_calls_decode_to_their_targets() {
        // call -0x40 (E8 C0 FF FF FF): 0x40 bytes back from the return address.
        assert_eq!(decode_x86_64(&[0xe8, 0xc0, 0xff, 0xff, 0xff]), Some(-0x40));
        assert_eq!(decode_x86_64(&[0xe8, 0x10, 0x00, 0x00, 0x00]), Some(0x10));
        assert_eq!(decode_x86_64(&[0xff, 0x15, 0x00, 0x00, 0x00]), None);
        // bl #+8 (0x94000002): the bl sits 4 bytes before the return address.
        assert_eq!(decode_aarch64(0x9400_0002), Some(4));
        // bl #-4 (0x97ffffff).
        assert_eq!(decode_aarch64(0x97ff_ffff), Some(-8));
        assert_eq!(decode_aarch64(0xd63f_0000), None); // blr x0
    }
}
