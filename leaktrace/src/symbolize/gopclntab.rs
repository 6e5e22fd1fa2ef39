//! Function names and file:line for stripped Go binaries, from `.gopclntab`.
//!
//! `go build -ldflags="-s -w"` drops `.symtab` and DWARF, which is all blazesym reads, but the
//! Go runtime needs its own PC table (for tracebacks and the GC) so it survives stripping; Go
//! profilers read it the same way. Supported layouts: Go 1.16-1.17 (magic `0xfffffffa`),
//! 1.18-1.19 (`0xfffffff0`) and 1.20+ (`0xfffffff1`); the format is documented by Go's
//! `runtime/symtab.go` and `debug/gosym`. No crate for it builds here and is kept up, hence
//! this reader. Inlined calls are expanded (Go 1.18+) from each function's inline tree, found
//! through the module data the way the runtime's own unwinder finds it.
use std::fs::File;

use memmap2::Mmap;
use object::{Object, ObjectSection, ObjectSegment};

/// One function's entry in a Go binary's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoLocation {
    pub function: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// A call inlined into the next location of the list.
    pub inlined: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    Go116,
    Go118,
    Go120,
}

/// A Go binary's PC table, mapped from the pinned file.
pub struct GoTable {
    map: Mmap,
    /// Where `.gopclntab` starts in the file, and its length.
    table: std::ops::Range<usize>,
    version: Version,
    ptr_size: usize,
    min_lc: u64,
    nfunc: usize,
    text_start: u64,
    funcnametab: usize,
    cutab: usize,
    filetab: usize,
    pctab: usize,
    pclntab: usize,
    /// `(virtual address, file offset, size)` of each loadable segment, to turn the file
    /// offsets of a process's mapping into the addresses the table uses.
    segments: Vec<(u64, u64, u64)>,
    /// `moduledata.gofunc`: the base of funcdata offsets (inline trees), when found.
    gofunc: Option<u64>,
}

impl std::fmt::Debug for GoTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoTable")
            .field("version", &self.version)
            .field("nfunc", &self.nfunc)
            .finish()
    }
}

/// What a binary is, as far as Go symbolization cares.
pub enum GoBinary {
    /// Not Go, or Go with a symbol table blazesym reads better (DWARF gives inlined frames).
    NotNeeded,
    /// A Go binary without `.symtab`: its table is the only source of names.
    Stripped(GoTable),
}

impl GoBinary {
    /// Looks at `file` (an ELF) and reads its table if it is a stripped Go binary.
    pub fn open(file: &File) -> Self {
        // SAFETY: the file is pinned read-only; a binary rewritten in place while mapped would
        // give wrong names, not unsoundness we act on (every read below is bounds-checked).
        let Ok(map) = (unsafe { Mmap::map(file) }) else {
            return Self::NotNeeded;
        };
        match GoTable::parse(map) {
            Some(table) => Self::Stripped(table),
            None => Self::NotNeeded,
        }
    }
}

impl GoTable {
    /// The table of any Go binary, stripped or not (goroutine ancestry finds runtime functions
    /// with it); `None` when `file` is not a Go binary this reader knows.
    pub fn open_any(file: &File) -> Option<Self> {
        // SAFETY: as in `GoBinary::open`.
        let map = unsafe { Mmap::map(file) }.ok()?;
        Self::parse_any(map)
    }

    /// The table of a Go binary held in memory (an ELF's bytes, copied once into a map of their
    /// own), as [`open_any`](Self::open_any) reads a file: for tests and fuzzing.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let mut map = memmap2::MmapMut::map_anon(bytes.len().max(1)).ok()?;
        map[..bytes.len()].copy_from_slice(bytes);
        let map = map.make_read_only().ok()?;
        Self::parse_any(map)
    }

    fn parse(map: Mmap) -> Option<Self> {
        let has_symtab = object::File::parse(&*map).ok()?.section_by_name(".symtab").is_some();
        if has_symtab { None } else { Self::parse_any(map) }
    }

    fn parse_any(map: Mmap) -> Option<Self> {
        let (table, segments, text_section) = {
            let elf = object::File::parse(&*map).ok()?;
            let table = match elf
                .section_by_name(".gopclntab")
                .and_then(|section| section.file_range())
            {
                Some((offset, size)) => offset as usize..(offset + size) as usize,
                // PIE and externally linked builds keep the table inside .data.rel.ro.
                None => find_by_magic(&map)?,
            };
            let segments = elf
                .segments()
                .filter_map(|segment| {
                    let (offset, size) = segment.file_range();
                    (size > 0).then(|| (segment.address(), offset, size))
                })
                .collect::<Vec<_>>();
            let text = elf
                .section_by_name(".text")
                .map(|section| section.address());
            let table_address = elf
                .section_by_name(".gopclntab")
                .map(|section| section.address());
            let noptrdata = elf
                .section_by_name(".noptrdata")
                .and_then(|section| section.file_range());
            (table, segments, (text, table_address, noptrdata))
        };
        let (text_section, table_address, noptrdata) = text_section;
        let data = map.get(table.clone())?;
        let version = match read_u32(data, 0)? {
            0xffff_fffa => Version::Go116,
            0xffff_fff0 => Version::Go118,
            0xffff_fff1 => Version::Go120,
            _ => return None,
        };
        let min_lc = u64::from(*data.get(6)?);
        let ptr_size = usize::from(*data.get(7)?);
        if data.get(4..6)? != [0, 0] || !matches!(min_lc, 1 | 2 | 4) || !matches!(ptr_size, 4 | 8) {
            return None;
        }
        let word = |index: usize| read_word(data, 8 + index * ptr_size, ptr_size);
        let nfunc = usize::try_from(word(0)?).ok()?;
        let (text_start, offsets_from) = match version {
            Version::Go116 => (0, 2),
            Version::Go118 | Version::Go120 => (word(2)?, 3),
        };
        // PIE binaries relocate textStart at load time; the file may hold 0 there.
        let text_start = if text_start == 0 && version != Version::Go116 {
            text_section?
        } else {
            text_start
        };
        let offset =
            |index: usize| word(offsets_from + index).and_then(|value| usize::try_from(value).ok());
        let parsed = Self {
            version,
            ptr_size,
            min_lc,
            nfunc,
            text_start,
            funcnametab: offset(0)?,
            cutab: offset(1)?,
            filetab: offset(2)?,
            pctab: offset(3)?,
            pclntab: offset(4)?,
            segments,
            table,
            map,
            gofunc: None,
        };
        // The function table must fit: a wrong magic hit fails here.
        parsed.functab_entry(nfunc)?;
        let mut parsed = parsed;
        parsed.gofunc = parsed.find_gofunc(table_address, noptrdata);
        Some(parsed)
    }

    fn data(&self) -> &[u8] {
        &self.map[self.table.clone()]
    }

    /// The virtual address a file offset of this binary is loaded at.
    pub fn file_offset_to_address(&self, file_offset: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|(_, offset, size)| within(*offset, *size, file_offset))
            .and_then(|(address, offset, _)| address.checked_add(file_offset - offset))
    }

    /// The file offset virtual address `address` is loaded from (what a uprobe is attached by).
    pub fn address_to_file_offset(&self, address: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|(start, _, size)| within(*start, *size, address))
            .and_then(|(start, offset, _)| offset.checked_add(address - start))
    }

    /// The addresses of the function named `name` (exactly as Go names it, e.g.
    /// `runtime.newproc1`): from its entry to the next function's.
    pub fn function_named(&self, name: &str) -> Option<std::ops::Range<u64>> {
        let data = self.data();
        (0..self.nfunc).find_map(|index| {
            let (entry, func) = self.functab_entry(index)?;
            let func = Func::read(self, self.pclntab + func)?;
            let start = self.funcnametab + func.name_offset;
            let found = data.get(start..start + name.len())? == name.as_bytes() && data.get(start + name.len()) == Some(&0);
            found.then(|| Some(entry..self.functab_entry(index + 1)?.0)).flatten()
        })
    }

    /// The bytes of the binary's file image at virtual addresses `range`.
    pub fn bytes_at(&self, range: std::ops::Range<u64>) -> Option<&[u8]> {
        self.read_at_address(range.start, usize::try_from(range.end.checked_sub(range.start)?).ok()?)
    }

    /// `(entry pc, offset of its _func)` of function `index` (`index == nfunc` is the end).
    fn functab_entry(&self, index: usize) -> Option<(u64, usize)> {
        let data = self.data();
        match self.version {
            Version::Go116 => {
                let at = self.pclntab + index * 2 * self.ptr_size;
                let entry = read_word(data, at, self.ptr_size)?;
                let func = read_word(data, at + self.ptr_size, self.ptr_size)?;
                Some((entry, usize::try_from(func).ok()?))
            }
            Version::Go118 | Version::Go120 => {
                let at = self.pclntab + index * 8;
                let entry = u64::from(read_u32(data, at)?);
                let func = read_u32(data, at + 4)? as usize;
                Some((self.text_start + entry, func))
            }
        }
    }

    /// The function, file and line of virtual address `address`, with the calls inlined there
    /// first (innermost first, like blazesym's frames).
    pub fn lookup(&self, address: u64) -> Option<Vec<GoLocation>> {
        let (entry, func) = self.function_at(address)?;
        let func = Func::read(self, self.pclntab + func)?;
        let mut locations = Vec::new();
        let mut pc = address;
        // Each inlined call at `pc` names the callee; its caller's position is at parentPc.
        // Bounded: a corrupt tree must not loop.
        for _ in 0..64 {
            let Some(call) = self.inlined_call(&func, entry, pc) else {
                break;
            };
            let (file, line) = self.file_line(&func, entry, pc);
            locations.push(GoLocation {
                function: call.name,
                file,
                line,
                inlined: true,
            });
            pc = entry + call.parent_pc;
        }
        let data = self.data();
        let (file, line) = self.file_line(&func, entry, pc);
        let function = c_string(data, self.funcnametab + func.name_offset)?;
        locations.push(GoLocation {
            function,
            file,
            line,
            inlined: false,
        });
        Some(locations)
    }

    /// The entry and `_func` offset of the function holding `address`.
    fn function_at(&self, address: u64) -> Option<(u64, usize)> {
        let (first, _) = self.functab_entry(0)?;
        let (end, _) = self.functab_entry(self.nfunc)?;
        if address < first || address >= end {
            return None;
        }
        // The last function whose entry is <= address.
        let (mut low, mut high) = (0usize, self.nfunc);
        while high - low > 1 {
            let middle = (low + high) / 2;
            if self.functab_entry(middle)?.0 <= address {
                low = middle;
            } else {
                high = middle;
            }
        }
        self.functab_entry(low)
    }

    /// The name of the function that starts exactly at `address`.
    pub fn function_starting_at(&self, address: u64) -> Option<String> {
        let (entry, func) = self.function_at(address)?;
        (entry == address).then_some(())?;
        let func = Func::read(self, self.pclntab + func)?;
        c_string(self.data(), self.funcnametab + func.name_offset)
    }

    fn file_line(&self, func: &Func, entry: u64, pc: u64) -> (Option<String>, Option<u32>) {
        let data = self.data();
        let line = self
            .pc_value(func.pcln, entry, pc)
            .and_then(|line| u32::try_from(line).ok());
        let file = self
            .pc_value(func.pcfile, entry, pc)
            .and_then(|file_index| {
                let file_index = usize::try_from(file_index).ok()?;
                let file_offset = read_u32(data, self.cutab + (func.cu_offset + file_index) * 4)?;
                (file_offset != u32::MAX).then_some(())?;
                c_string(data, self.filetab + file_offset as usize)
            });
        (file, line)
    }

    /// The call inlined at `pc`, if any (`PCDATA_InlTreeIndex` into `FUNCDATA_InlTree`).
    fn inlined_call(&self, func: &Func, entry: u64, pc: u64) -> Option<InlinedCall> {
        const PCDATA_INL_TREE_INDEX: usize = 2;
        const FUNCDATA_INL_TREE: usize = 3;
        let gofunc = self.gofunc?;
        if func.npcdata <= PCDATA_INL_TREE_INDEX || func.nfuncdata <= FUNCDATA_INL_TREE {
            return None;
        }
        let data = self.data();
        let table = read_u32(data, func.pcdata + PCDATA_INL_TREE_INDEX * 4)?;
        let index = self.pc_value(table, entry, pc)?;
        let index = usize::try_from(index).ok()?;
        let tree = read_u32(data, func.pcdata + func.npcdata * 4 + FUNCDATA_INL_TREE * 4)?;
        if tree == u32::MAX {
            return None;
        }
        let (size, name_at, parent_pc_at) = match self.version {
            Version::Go116 => return None,
            // parent int16, funcID, _, file int32, line int32, func_ int32, parentPc int32
            Version::Go118 => (20, 12, 16),
            // funcID, _ [3]byte, nameOff int32, parentPc int32, startLine int32
            Version::Go120 => (16, 4, 8),
        };
        let call = self.read_at_address(gofunc + u64::from(tree) + (index * size) as u64, size)?;
        let name_offset = usize::try_from(i32::from_le_bytes(
            call[name_at..name_at + 4].try_into().ok()?,
        ))
        .ok()?;
        let parent_pc = u64::try_from(i32::from_le_bytes(
            call[parent_pc_at..parent_pc_at + 4].try_into().ok()?,
        ))
        .ok()?;
        Some(InlinedCall {
            name: c_string(data, self.funcnametab + name_offset)?,
            parent_pc,
        })
    }

    /// `len` bytes at virtual address `address` of the binary's file image.
    fn read_at_address(&self, address: u64, len: usize) -> Option<&[u8]> {
        let (segment_address, offset, _) = self
            .segments
            .iter()
            .find(|(start, _, size)| (*start..start + size).contains(&address))?;
        let at = usize::try_from(offset + (address - segment_address)).ok()?;
        self.map.get(at..at + len)
    }

    /// Finds `runtime.firstmoduledata` (its first word points at the table, it lives in
    /// `.noptrdata`) and reads its `gofunc`, checking its `text` against the table's.
    fn find_gofunc(
        &self,
        table_address: Option<u64>,
        noptrdata: Option<(u64, u64)>,
    ) -> Option<u64> {
        let (gofunc_word, text_word) = match self.version {
            Version::Go116 => return None,
            Version::Go118 => (38, 22),
            // 1.20 added covctrs and ecovctrs after noptrbss/enoptrbss.
            Version::Go120 => (40, 22),
        };
        if self.ptr_size != 8 {
            return None;
        }
        let table_address = table_address?.to_le_bytes();
        let (offset, size) = noptrdata?;
        let section = self.map.get(offset as usize..(offset + size) as usize)?;
        section
            .chunks_exact(8)
            .enumerate()
            .find_map(|(index, word)| {
                if word != table_address {
                    return None;
                }
                let module = &section[index * 8..];
                let text = read_word(module, text_word * 8, 8)?;
                let gofunc = read_word(module, gofunc_word * 8, 8)?;
                (text == self.text_start && self.read_at_address(gofunc, 1).is_some())
                    .then_some(gofunc)
            })
    }

    /// Runs the PC-value table at `offset` from `entry` up to `target` (runtime.pcvalue).
    fn pc_value(&self, offset: u32, entry: u64, target: u64) -> Option<i64> {
        if offset == 0 {
            return None;
        }
        let data = self.data();
        let mut at = self.pctab + offset as usize;
        let (mut pc, mut value, mut first) = (entry, -1i64, true);
        loop {
            let value_delta = read_uvarint(data, &mut at)?;
            if value_delta == 0 && !first {
                return None;
            }
            first = false;
            // Zig-zag: the low bit is the sign.
            let delta = if value_delta & 1 != 0 {
                !(value_delta >> 1) as i64
            } else {
                (value_delta >> 1) as i64
            };
            value = value.wrapping_add(delta);
            pc += read_uvarint(data, &mut at)? * self.min_lc;
            if target < pc {
                return Some(value);
            }
        }
    }
}

/// The fields of a `runtime._func` the lookups use.
struct Func {
    name_offset: usize,
    pcfile: u32,
    pcln: u32,
    npcdata: usize,
    cu_offset: usize,
    nfuncdata: usize,
    /// Where its `pcdata` offsets start (its `funcdata` offsets follow them).
    pcdata: usize,
}

impl Func {
    fn read(table: &GoTable, at: usize) -> Option<Self> {
        let data = table.data();
        // runtime._func: the 1.16 layout starts with a pointer-sized entry, later ones with a
        // u32 entry offset; 1.20 added startLine before funcID.
        let (base, fixed_size) = match table.version {
            Version::Go116 => (at + table.ptr_size, table.ptr_size + 36),
            Version::Go118 => (at + 4, 40),
            Version::Go120 => (at + 4, 44),
        };
        Some(Self {
            name_offset: read_u32(data, base)? as usize,
            pcfile: read_u32(data, base + 16)?,
            pcln: read_u32(data, base + 20)?,
            npcdata: read_u32(data, base + 24)? as usize,
            cu_offset: read_u32(data, base + 28)? as usize,
            nfuncdata: usize::from(*data.get(at + fixed_size - 1)?),
            pcdata: at + fixed_size,
        })
    }
}

struct InlinedCall {
    name: String,
    /// Offset from the function's entry of an instruction at the call site.
    parent_pc: u64,
}

/// Finds a pcHeader by its magic where the table has no section of its own.
fn find_by_magic(map: &[u8]) -> Option<std::ops::Range<usize>> {
    const MAGICS: [[u8; 4]; 3] = [
        [0xf1, 0xff, 0xff, 0xff],
        [0xf0, 0xff, 0xff, 0xff],
        [0xfa, 0xff, 0xff, 0xff],
    ];
    map.windows(8)
        .position(|window| {
            MAGICS.iter().any(|magic| window[..4] == *magic)
                && window[4..6] == [0, 0]
                && matches!(window[6], 1 | 2 | 4)
                && matches!(window[7], 4 | 8)
        })
        .map(|start| start..map.len())
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

fn read_word(data: &[u8], at: usize, ptr_size: usize) -> Option<u64> {
    match ptr_size {
        4 => read_u32(data, at).map(u64::from),
        _ => Some(u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?)),
    }
}

fn read_uvarint(data: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *data.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn c_string(data: &[u8], at: usize) -> Option<String> {
    let bytes = data.get(at..)?;
    let end = bytes.iter().position(|&byte| byte == 0)?;
    Some(String::from_utf8_lossy(&bytes[..end]).into_owned())
}

/// Whether `value` lies in the `size` bytes from `start`: a segment a malformed ELF header
/// stretches past the end of the address space ends there.
fn within(start: u64, size: u64, value: u64) -> bool {
    value >= start && value - start < size
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_reaching_past_the_address_space_is_searched_without_overflow() {
        // Found by the go_table fuzz target: a program header whose start + size overflows.
        assert!(within(u64::MAX - 4, u64::MAX, u64::MAX));
        assert!(!within(u64::MAX - 4, u64::MAX, 3));
        assert!(within(0x1000, 0x10, 0x100f));
        assert!(!within(0x1000, 0x10, 0x1010));
    }

    #[test]
    fn uvarints_decode_like_go() {
        let data = [0x05, 0xac, 0x02, 0xff, 0xff, 0x03];
        let mut at = 0;
        assert_eq!(read_uvarint(&data, &mut at), Some(5));
        assert_eq!(read_uvarint(&data, &mut at), Some(300));
        assert_eq!(read_uvarint(&data, &mut at), Some(0xffff));
        assert_eq!(at, data.len());
        assert_eq!(read_uvarint(&[0x80], &mut 0), None);
    }

    #[test]
    fn c_strings_end_at_nul() {
        assert_eq!(
            c_string(b"main.main\0net.Dial\0", 10).as_deref(),
            Some("net.Dial")
        );
        assert_eq!(c_string(b"unterminated", 0), None);
    }

    #[test]
    fn a_go_binary_in_memory_reads_like_its_file() {
        // `hello` built by Go 1.23, stripped and cut to its table sections: the fuzzer's seed.
        let table = GoTable::from_bytes(include_bytes!("../../../fuzz/corpus/go_table/hello-go1.23")).unwrap();
        assert_eq!(table.version, Version::Go120);
        let main = table.function_named("main.main").unwrap();
        let frames = table.lookup(main.start).unwrap();
        assert_eq!(frames.last().unwrap().function, "main.main");
        assert_eq!(table.function_starting_at(main.start).as_deref(), Some("main.main"));
        assert!(GoTable::from_bytes(b"").is_none());
        assert!(GoTable::from_bytes(b"\x7fELF").is_none());
    }
}
