//! The RET instructions of a function's machine code (amd64), found by decoding it: a Go
//! function may return from several places, and each needs its own uprobe, since a uretprobe
//! (which would catch every return at once) crashes Go programs.
use iced_x86::{Decoder, DecoderOptions, Mnemonic};

/// Virtual addresses of every `ret` in `code`, which is loaded at `address`.
pub fn ret_addresses(code: &[u8], address: u64) -> Vec<u64> {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut found = Vec::new();
    for instruction in &mut decoder {
        if instruction.mnemonic() == Mnemonic::Ret && !instruction.is_invalid() {
            found.push(instruction.ip());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ret_is_found_and_ret_bytes_inside_other_instructions_are_not() {
        let code = [
            0x48, 0x83, 0xec, 0x18, // sub rsp, 0x18
            0xb8, 0xc3, 0x00, 0x00, 0x00, // mov eax, 0xc3: a 0xc3 byte that is no ret
            0x74, 0x01, // je +1
            0xc3, // ret
            0x48, 0x83, 0xc4, 0x18, // add rsp, 0x18
            0xc3, // ret
            0xcc, 0xcc, // int3 padding
        ];
        assert_eq!(ret_addresses(&code, 0x1000), vec![0x100b, 0x1010]);
    }
}
