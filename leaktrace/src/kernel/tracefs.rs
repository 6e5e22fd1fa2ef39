//! tracefs: where classic tracepoints are found, mounted when a fresh machine has not, and the
//! `format` files that say where each field of a tracepoint record lies.
use std::{
    fs,
    io,
    path::{Path, PathBuf},
};

pub const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted and mounting it at {TRACEFS} failed: {source}\n\
         hint: mount it by hand (`mount -t tracefs tracefs {TRACEFS}`), or run leaktrace with CAP_SYS_ADMIN"
    )]
    Mount {
        #[source]
        source: io::Error,
    },
    #[error(
        "tracefs at {root} is not readable by this process ({source}): it is usually root's only (mode 0700)\n\
         hint: grant CAP_DAC_READ_SEARCH as well (`setcap {least}+ep leaktrace`), or run leaktrace as root",
        least = super::privileges::LEAST
    )]
    Unreadable {
        root: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the tracepoint format {path}: {source} (is the tracepoint in this kernel?)")]
    ReadFormat {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("tracepoint format {path} has no field `{field}`")]
    FieldMissing { path: PathBuf, field: String },
}

/// The tracefs root, mounting it at `/sys/kernel/tracing` first if no tracefs is mounted.
/// Returns the root and whether leaktrace mounted it.
pub fn ensure_mounted() -> Result<(PathBuf, bool), TracefsError> {
    if let Some(root) = mounted_root() {
        return Ok((root, false));
    }
    // A mount point that may not even be searched is a tracefs mounted for root only: mounting
    // another one over it would only fail with EBUSY.
    for root in [TRACEFS, DEBUGFS_TRACING].map(Path::new) {
        if let Err(source) = root.join("events").metadata()
            && source.kind() == io::ErrorKind::PermissionDenied
        {
            return Err(TracefsError::Unreadable { root: root.to_path_buf(), source });
        }
    }
    let target = std::ffi::CString::new(TRACEFS).expect("no NUL in a constant");
    let fstype = c"tracefs";
    // SAFETY: plain mount(2) with valid C strings and no data.
    let rc = unsafe { libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(TracefsError::Mount { source: io::Error::last_os_error() });
    }
    Ok((PathBuf::from(TRACEFS), true))
}

fn mounted_root() -> Option<PathBuf> {
    [TRACEFS, DEBUGFS_TRACING]
        .into_iter()
        .map(Path::new)
        .find(|root| root.join("events").is_dir())
        .map(Path::to_path_buf)
}

/// Byte offset of each named field in the record of tracepoint `category:name`.
pub fn field_offsets(root: &Path, category: &str, name: &str, fields: &[&str]) -> Result<Vec<u32>, TracefsError> {
    let path = root.join("events").join(category).join(name).join("format");
    let text = fs::read_to_string(&path).map_err(|source| TracefsError::ReadFormat { path: path.clone(), source })?;
    fields
        .iter()
        .map(|field| {
            parse_offset(&text, field).ok_or_else(|| TracefsError::FieldMissing { path: path.clone(), field: field.to_string() })
        })
        .collect()
}

/// Finds `field:<type> <field>[<n>];<tab>offset:<n>;` in a format file.
fn parse_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let decl = line.trim().strip_prefix("field:")?;
        let (decl, rest) = decl.split_once(';')?;
        let declared = decl.rsplit([' ', '*']).next()?;
        let declared = declared.split('[').next()?;
        if declared != field {
            return None;
        }
        rest.trim().strip_prefix("offset:")?.split(';').next()?.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const INET_SOCK_SET_STATE: &str = "name: inet_sock_set_state
ID: 1445
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
";

    #[test]
    fn parses_field_offsets_from_a_format_file() {
        assert_eq!(parse_offset(INET_SOCK_SET_STATE, "skaddr"), Some(8));
        assert_eq!(parse_offset(INET_SOCK_SET_STATE, "oldstate"), Some(16));
        assert_eq!(parse_offset(INET_SOCK_SET_STATE, "protocol"), Some(30));
        assert_eq!(parse_offset(INET_SOCK_SET_STATE, "saddr"), Some(32));
        assert_eq!(parse_offset(INET_SOCK_SET_STATE, "state"), None);
    }
}
