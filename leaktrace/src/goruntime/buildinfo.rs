//! The Go version a binary was built with, from the `.go.buildinfo` section the toolchain
//! writes (`runtime/debug.ReadBuildInfo` reads the same): a 16-byte header (`\xff Go buildinf:`,
//! pointer size, flags), then, with flag bit 2 (Go 1.18+), the version as a varint-prefixed
//! string at offset 32. Older layouts held pointers instead; those binaries predate what
//! ancestry supports and read as unknown.
use std::fmt;

use object::{Object, ObjectSection};

const MAGIC: &[u8] = b"\xff Go buildinf:";
const FLAG_INLINE_STRINGS: u8 = 2;

/// `go1.21.5` as (1, 21); the patch level does not change the runtime's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoVersion {
    pub major: u32,
    pub minor: u32,
}

impl GoVersion {
    pub const fn new(major: u32, minor: u32) -> Self {
        Self { major, minor }
    }

    /// `go1.21.5`, `go1.22rc1`, `go1.23.0 X:nocoverageredesign` -> 1.21, 1.22, 1.23.
    pub fn parse(text: &str) -> Option<Self> {
        let rest = text.strip_prefix("go")?;
        let mut parts = rest.split(|c: char| !c.is_ascii_digit());
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(Self { major, minor })
    }
}

impl fmt::Display for GoVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Go {}.{}", self.major, self.minor)
    }
}

/// The version stamped into `elf`, if it has a readable `.go.buildinfo`.
pub fn version(elf: &object::File<'_>) -> Option<GoVersion> {
    let section = elf.section_by_name(".go.buildinfo")?;
    GoVersion::parse(&version_string(section.data().ok()?)?)
}

/// The version string of a `.go.buildinfo` section's bytes.
pub fn version_string(data: &[u8]) -> Option<String> {
    if data.get(..MAGIC.len())? != MAGIC || data.get(15)? & FLAG_INLINE_STRINGS == 0 {
        return None;
    }
    let mut at = 32;
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let byte = *data.get(at)?;
        at += 1;
        len |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 28 {
            return None;
        }
    }
    String::from_utf8(data.get(at..at + len)?.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_what_the_toolchain_stamps() {
        assert_eq!(GoVersion::parse("go1.19.8"), Some(GoVersion::new(1, 19)));
        assert_eq!(GoVersion::parse("go1.22rc1"), Some(GoVersion::new(1, 22)));
        assert_eq!(GoVersion::parse("go1.23.0 X:nocoverageredesign"), Some(GoVersion::new(1, 23)));
        assert_eq!(GoVersion::parse("devel +abc"), None);
        assert!(GoVersion::new(1, 9) < GoVersion::new(1, 18));
    }

    #[test]
    fn the_inline_string_layout_is_read_and_others_are_not_guessed() {
        let mut section = MAGIC.to_vec();
        section.extend([8, FLAG_INLINE_STRINGS]);
        section.resize(32, 0);
        section.push(8);
        section.extend(b"go1.21.5");
        assert_eq!(version_string(&section).as_deref(), Some("go1.21.5"));
        section[15] = 0;
        assert_eq!(version_string(&section), None, "pre-1.18 pointer layout");
        assert_eq!(version_string(b"\xff Go buildinf"), None);
        let mut cut = MAGIC.to_vec();
        cut.extend([8, FLAG_INLINE_STRINGS]);
        cut.resize(32, 0);
        cut.push(40);
        cut.extend(b"go1");
        assert_eq!(version_string(&cut), None, "a length past the section");
    }
}
