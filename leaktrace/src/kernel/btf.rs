//! Field offsets of the kernel structures the probes read, resolved from the running kernel's
//! BTF (`/sys/kernel/btf/vmlinux`). aya's Rust programs are not CO-RE relocated, so this is how
//! one object reads `struct sock` correctly on every kernel: userspace finds each field here
//! and hands the offsets to the programs as load-time constants.
use std::path::{Path, PathBuf};

use btf_rs::{Btf, Type};
use leaktrace_common::KernelOffsets;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "this kernel exposes no BTF at {path}: leaktrace needs a kernel built with \
         CONFIG_DEBUG_INFO_BTF=y (most distribution kernels since 5.4 are)"
    )]
    Missing { path: PathBuf },
    #[error("cannot parse the kernel BTF at {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: btf_rs::Error,
    },
    #[error("kernel BTF has no {what}: this kernel's layout is not one leaktrace knows how to read")]
    FieldMissing { what: String },
}

/// The parsed kernel BTF and what leaktrace needs from it.
pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        if !path.exists() {
            return Err(BtfError::Missing { path: path.into() });
        }
        let btf = Btf::from_file(path).map_err(|source| BtfError::Parse { path: path.into(), source })?;
        Ok(Self { btf })
    }

    pub fn offsets(&self) -> Result<KernelOffsets, BtfError> {
        let common = |field: &str| self.byte_offset("sock", &["__sk_common", field]);
        let protocol = self.field("sock", &["sk_protocol"])?;
        // Read the aligned 32-bit word that holds sk_protocol, then shift and mask: it was an
        // 8-bit bitfield before 5.6 and is a u16 since.
        let word_bits = protocol.bit_offset / 32 * 32;
        Ok(KernelOffsets {
            sock_family: common("skc_family")?,
            sock_state: common("skc_state")?,
            sock_local_port: common("skc_num")?,
            sock_remote_port: common("skc_dport")?,
            sock_local_addr4: common("skc_rcv_saddr")?,
            sock_remote_addr4: common("skc_daddr")?,
            sock_local_addr6: common("skc_v6_rcv_saddr")?,
            sock_remote_addr6: common("skc_v6_daddr")?,
            sock_protocol_word: word_bits / 8,
            sock_protocol_shift: protocol.bit_offset - word_bits,
            sock_protocol_bits: protocol.bits,
            task_group_leader: self.byte_offset("task_struct", &["group_leader"])?,
            task_start_time: self.byte_offset("task_struct", &["start_time"])?,
            task_files: self.byte_offset("task_struct", &["files"])?,
            files_fdt: self.byte_offset("files_struct", &["fdt"])?,
            fdtable_fd: self.byte_offset("fdtable", &["fd"])?,
            fdtable_max_fds: self.byte_offset("fdtable", &["max_fds"])?,
            file_private_data: self.byte_offset("file", &["private_data"])?,
            socket_sk: self.byte_offset("socket", &["sk"])?,
            // Only x86_64 keeps the TLS base there (arm64 has thread.uw.tp_value and Go keeps
            // g in a register): without it, goroutine ancestry is unavailable, nothing else.
            task_thread_fsbase: self.byte_offset("task_struct", &["thread", "fsbase"]).unwrap_or(0),
            task_comm: self.byte_offset("task_struct", &["comm"])?,
            // A kernel without io_uring has no io_kiocb: its probes are not attached there.
            io_kiocb_opcode: self.byte_offset("io_kiocb", &["opcode"]).unwrap_or(0),
            io_kiocb_cqe_fd: self.byte_offset("io_kiocb", &["cqe", "fd"]).unwrap_or(0),
        })
    }

    fn byte_offset(&self, strukt: &str, path: &[&str]) -> Result<u32, BtfError> {
        let field = self.field(strukt, path)?;
        if field.bit_offset % 8 != 0 {
            return Err(BtfError::FieldMissing {
                what: format!("byte-aligned {strukt}.{}", path.join(".")),
            });
        }
        Ok(field.bit_offset / 8)
    }

    /// Finds `strukt.path[0].path[1]…`, looking through anonymous structs and unions.
    fn field(&self, strukt: &str, path: &[&str]) -> Result<Field, BtfError> {
        let missing = || BtfError::FieldMissing { what: format!("struct {strukt} field {}", path.join(".")) };
        let mut current = self
            .btf
            .resolve_types_by_name(strukt)
            .map_err(|_| missing())?
            .into_iter()
            .find(|ty| matches!(ty, Type::Struct(s) if !s.members.is_empty()))
            .ok_or_else(missing)?;
        let mut found = Field { bit_offset: 0, bits: 0 };
        for name in path {
            let (offset, member_type, bits) = self.find_member(&current, name).ok_or_else(missing)?;
            found = Field { bit_offset: found.bit_offset + offset, bits };
            current = member_type;
        }
        Ok(found)
    }

    /// `(bit offset, type, width in bits)` of member `name` of a struct or union, searching
    /// anonymous members depth-first.
    fn find_member(&self, ty: &Type, name: &str) -> Option<(u32, Type, u32)> {
        let members = match ty {
            Type::Struct(s) | Type::Union(s) => &s.members,
            _ => return None,
        };
        for member in members {
            let member_name = self.btf.resolve_name(member).unwrap_or_default();
            let member_type = self.strip_modifiers(self.btf.resolve_chained_type(member).ok()?);
            if member_name == name {
                let bits = member.bitfield_size().filter(|&b| b != 0).unwrap_or_else(|| self.size_bits(&member_type));
                return Some((member.bit_offset(), member_type, bits));
            }
            if member_name.is_empty()
                && let Some((offset, found, bits)) = self.find_member(&member_type, name)
            {
                return Some((member.bit_offset() + offset, found, bits));
            }
        }
        None
    }

    fn strip_modifiers(&self, mut ty: Type) -> Type {
        for _ in 0..16 {
            match &ty {
                Type::Typedef(_) | Type::Const(_) | Type::Volatile(_) | Type::Restrict(_) | Type::TypeTag(_) => {
                    match ty.as_btf_type().and_then(|t| self.btf.resolve_chained_type(t).ok()) {
                        Some(next) => ty = next,
                        None => break,
                    }
                }
                _ => break,
            }
        }
        ty
    }

    fn size_bits(&self, ty: &Type) -> u32 {
        let bytes = match ty {
            Type::Int(i) => i.size(),
            Type::Struct(s) | Type::Union(s) => s.size(),
            Type::Enum(e) => e.size(),
            Type::Ptr(_) => 8,
            _ => 8,
        };
        (bytes * 8) as u32
    }
}

#[derive(Clone, Copy, Debug)]
struct Field {
    bit_offset: u32,
    bits: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's BTF resolves every field, with the layout every x86_64/arm64 kernel
    /// since 4.x has had for `struct sock_common`'s head.
    #[test]
    fn resolves_the_running_kernels_offsets() {
        let btf = match KernelBtf::from_sys_fs() {
            Ok(btf) => btf,
            Err(BtfError::Missing { .. }) => {
                eprintln!("skipped: this kernel has no {VMLINUX_BTF}");
                return;
            }
            Err(err) => panic!("{err}"),
        };
        let offsets = btf.offsets().unwrap();
        assert_eq!(offsets.sock_remote_addr4, 0, "skc_daddr opens struct sock_common");
        assert_eq!(offsets.sock_local_addr4, 4);
        assert_eq!(offsets.sock_remote_port, 12, "skc_dport follows the addresses and hash");
        assert_eq!(offsets.sock_local_port, 14);
        assert_eq!(offsets.sock_family, 16);
        assert_eq!(offsets.sock_state, 18);
        assert!(offsets.sock_protocol_bits == 16 || offsets.sock_protocol_bits == 8);
        assert!(offsets.task_files > 0 && offsets.socket_sk > 0 && offsets.fdtable_fd > 0);
        if Path::new("/sys/kernel/tracing/events/io_uring").is_dir() {
            assert!(offsets.io_kiocb_opcode > 0, "a kernel with io_uring has io_kiocb.opcode");
            assert!(offsets.io_kiocb_cqe_fd > 0, "and io_kiocb.cqe.fd");
        }
    }

    #[test]
    fn a_missing_file_says_what_to_do() {
        let err = KernelBtf::from_file(Path::new("/nonexistent/vmlinux")).err().unwrap();
        assert!(err.to_string().contains("CONFIG_DEBUG_INFO_BTF"), "{err}");
    }
}
