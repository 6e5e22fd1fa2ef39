//! Where the Go runtime keeps what the ancestry probes read: `runtime.g.goid` (a goroutine's
//! id), `runtime.g.m` (its thread) and `runtime.m.curg` (the goroutine a thread runs). Read from
//! the binary's own DWARF where it has it, so any version's layout is right; a stripped binary
//! has no DWARF, and then a table of the layouts of known versions stands in (each row checked
//! against the DWARF of that version's toolchain by the end-to-end tests).
use std::borrow::Cow;

use gimli::{AttributeValue, EndianSlice, LittleEndian};
use object::{Object, ObjectSection};

use super::GoVersion;

/// Field offsets, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuntimeLayout {
    pub g_goid: u32,
    pub g_m: u32,
    pub m_curg: u32,
    pub source: LayoutSource,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutSource {
    Dwarf,
    /// The table row of this version (the binary has no DWARF).
    Table(GoVersion),
}

impl std::fmt::Display for LayoutSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LayoutSource::Dwarf => write!(f, "DWARF"),
            LayoutSource::Table(version) => write!(f, "the {version} table"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("the binary's DWARF has no {0} (not a Go runtime leaktrace knows)")]
    DwarfField(&'static str),
    #[error("cannot read the binary's DWARF: {0}")]
    Dwarf(String),
    #[error("a stripped binary of {0}, whose runtime layout leaktrace has no table for (known: Go 1.19 to 1.23); a build with DWARF works")]
    UnknownVersion(GoVersion),
    #[error("a stripped binary of an unknown Go version: no DWARF and no version stamp to pick a layout")]
    NoVersion,
}

/// `(first, last)` minor versions of Go 1.x sharing one amd64 layout.
const TABLE: &[(u32, u32, RuntimeLayout)] = &[
    (19, 22, layout(152, 48, 192, 19)),
    (23, 23, layout(160, 48, 192, 23)),
];

const fn layout(g_goid: u32, g_m: u32, m_curg: u32, minor: u32) -> RuntimeLayout {
    RuntimeLayout { g_goid, g_m, m_curg, source: LayoutSource::Table(GoVersion::new(1, minor)) }
}

impl RuntimeLayout {
    /// The layout of `elf`'s runtime: its DWARF's, else the table's for `version`.
    pub fn of(elf: &object::File<'_>, version: Option<GoVersion>) -> Result<Self, LayoutError> {
        if elf.section_by_name(".debug_info").is_some() {
            return from_dwarf(elf);
        }
        Self::from_table(version.ok_or(LayoutError::NoVersion)?)
    }

    pub fn from_table(version: GoVersion) -> Result<Self, LayoutError> {
        TABLE
            .iter()
            .find(|(first, last, _)| version.major == 1 && (*first..=*last).contains(&version.minor))
            .map(|(_, _, layout)| RuntimeLayout { source: LayoutSource::Table(version), ..*layout })
            .ok_or(LayoutError::UnknownVersion(version))
    }
}

type Reader<'a> = EndianSlice<'a, LittleEndian>;

fn from_dwarf(elf: &object::File<'_>) -> Result<RuntimeLayout, LayoutError> {
    let dwarf_error = |err: gimli::Error| LayoutError::Dwarf(err.to_string());
    let sections = gimli::DwarfSections::load(|id| -> Result<Cow<'_, [u8]>, gimli::Error> {
        Ok(elf
            .section_by_name(id.name())
            .and_then(|section| section.uncompressed_data().ok())
            .unwrap_or(Cow::Borrowed(&[])))
    })
    .map_err(dwarf_error)?;
    let dwarf = sections.borrow(|section| EndianSlice::new(section, LittleEndian));
    let (mut g, mut m) = (None, None);
    let mut units = dwarf.units();
    while let Some(header) = units.next().map_err(dwarf_error)? {
        let unit = dwarf.unit(header).map_err(dwarf_error)?;
        let mut entries = unit.entries();
        while let Some(entry) = entries.next_dfs().map_err(dwarf_error)? {
            if entry.tag() != gimli::DW_TAG_structure_type {
                continue;
            }
            let Some(name) = entry.attr_value(gimli::DW_AT_name) else { continue };
            let Ok(name) = dwarf.attr_string(&unit, name) else { continue };
            let slot = match name.slice() {
                b"runtime.g" if g.is_none() => &mut g,
                b"runtime.m" if m.is_none() => &mut m,
                _ => continue,
            };
            *slot = Some(members(&dwarf, &unit, entry.offset()).map_err(dwarf_error)?);
            if g.is_some() && m.is_some() {
                break;
            }
        }
        if g.is_some() && m.is_some() {
            break;
        }
    }
    let g = g.ok_or(LayoutError::DwarfField("runtime.g"))?;
    let m = m.ok_or(LayoutError::DwarfField("runtime.m"))?;
    let field = |members: &[(Vec<u8>, u32)], name: &'static str, what: &'static str| {
        members.iter().find(|(member, _)| member == name.as_bytes()).map(|(_, offset)| *offset).ok_or(LayoutError::DwarfField(what))
    };
    Ok(RuntimeLayout {
        g_goid: field(&g, "goid", "runtime.g.goid")?,
        g_m: field(&g, "m", "runtime.g.m")?,
        m_curg: field(&m, "curg", "runtime.m.curg")?,
        source: LayoutSource::Dwarf,
    })
}

/// `(name, byte offset)` of each member of the structure at `offset`.
fn members(
    dwarf: &gimli::Dwarf<Reader<'_>>,
    unit: &gimli::Unit<Reader<'_>>,
    offset: gimli::UnitOffset,
) -> Result<Vec<(Vec<u8>, u32)>, gimli::Error> {
    let mut tree = unit.entries_tree(Some(offset))?;
    let mut children = tree.root()?.children();
    let mut found = Vec::new();
    while let Some(child) = children.next()? {
        let entry = child.entry();
        if entry.tag() != gimli::DW_TAG_member {
            continue;
        }
        let (Some(name), Some(location)) = (entry.attr_value(gimli::DW_AT_name), entry.attr_value(gimli::DW_AT_data_member_location)) else {
            continue;
        };
        let offset = match location {
            AttributeValue::Udata(offset) => offset,
            other => match other.udata_value() {
                Some(offset) => offset,
                None => continue,
            },
        };
        let name = dwarf.attr_string(unit, name)?;
        found.push((name.slice().to_vec(), offset as u32));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_knows_its_versions_and_refuses_others() {
        let go119 = RuntimeLayout::from_table(GoVersion::new(1, 19)).unwrap();
        assert_eq!((go119.g_goid, go119.g_m, go119.m_curg), (152, 48, 192));
        assert_eq!(go119.source, LayoutSource::Table(GoVersion::new(1, 19)));
        assert_eq!(RuntimeLayout::from_table(GoVersion::new(1, 23)).unwrap().g_goid, 160);
        let err = RuntimeLayout::from_table(GoVersion::new(1, 25)).unwrap_err();
        assert_eq!(err, LayoutError::UnknownVersion(GoVersion::new(1, 25)));
        assert!(err.to_string().contains("a build with DWARF works"), "{err}");
    }
}
