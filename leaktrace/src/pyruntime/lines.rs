//! A code object's line table turned into the line of one instruction, in each format CPython
//! has used since 3.8: `co_lnotab` (3.8, 3.9), PEP 626's `co_linetable` (3.10) and the location
//! table of 3.11+ (CPython's `Objects/lnotab_notes.txt` and `Objects/locations.md`).
use super::layout::LineTable;

/// The line of the instruction at `offset` bytes into the code, or `None` where the table gives
/// that instruction no line (code the compiler added) or ends before it.
pub fn line_at(format: LineTable, table: &[u8], first_line: u32, offset: u64) -> Option<u32> {
    let line = match format {
        LineTable::Lnotab => lnotab(table, first_line.into(), offset),
        LineTable::Pep626 => pep626(table, first_line.into(), offset),
        LineTable::Locations => locations(table, first_line.into(), offset / 2),
    }?;
    u32::try_from(line).ok()
}

/// (byte delta, signed line delta) pairs: the line changes after each byte delta is passed.
fn lnotab(table: &[u8], mut line: i64, offset: u64) -> Option<i64> {
    let mut address = 0u64;
    for pair in table.chunks_exact(2) {
        address += u64::from(pair[0]);
        if address > offset {
            break;
        }
        line += i64::from(pair[1] as i8);
    }
    Some(line)
}

/// (byte length, signed line delta) pairs, each a range of instructions; a delta of -128 is a
/// range without a line.
fn pep626(table: &[u8], mut line: i64, offset: u64) -> Option<i64> {
    let mut end = 0u64;
    for pair in table.chunks_exact(2) {
        let start = end;
        end += u64::from(pair[0]);
        let delta = pair[1] as i8;
        let this = (delta != -128).then(|| {
            line += i64::from(delta);
            line
        });
        if (start..end).contains(&offset) {
            return this;
        }
    }
    None
}

/// Entries of 1 to 8 code units each: a first byte `1 code:4 length-1:3`, then the code's
/// operands (line deltas as zig-zag varints of 6-bit chunks, columns the view does not need).
fn locations(table: &[u8], mut line: i64, unit: u64) -> Option<i64> {
    let mut bytes = table.iter().copied();
    let mut end = 0u64;
    while let Some(first) = bytes.next() {
        if first & 0x80 == 0 {
            // Not an entry's first byte: a table leaktrace misread.
            return None;
        }
        let code = (first >> 3) & 15;
        let start = end;
        end += u64::from(first & 7) + 1;
        let this = match code {
            // No location.
            15 => None,
            // Long form: line delta, end line delta, column, end column.
            14 => {
                line += signed_varint(&mut bytes)?;
                for _ in 0..3 {
                    varint(&mut bytes)?;
                }
                Some(line)
            }
            // No column: the line delta alone.
            13 => {
                line += signed_varint(&mut bytes)?;
                Some(line)
            }
            // One-line forms: the delta is in the code, then start and end columns.
            10..=12 => {
                line += i64::from(code - 10);
                bytes.nth(1)?;
                Some(line)
            }
            // Short forms: the same line, one byte of columns.
            _ => {
                bytes.next()?;
                Some(line)
            }
        };
        if (start..end).contains(&unit) {
            return this;
        }
    }
    None
}

fn varint(bytes: &mut impl Iterator<Item = u8>) -> Option<u64> {
    let mut byte = bytes.next()?;
    let mut value = u64::from(byte & 63);
    let mut shift = 0;
    while byte & 64 != 0 {
        byte = bytes.next()?;
        shift += 6;
        if shift > 60 {
            return None;
        }
        value |= u64::from(byte & 63) << shift;
    }
    Some(value)
}

fn signed_varint(bytes: &mut impl Iterator<Item = u8>) -> Option<i64> {
    let value = varint(bytes)?;
    let magnitude = (value >> 1) as i64;
    Some(if value & 1 != 0 { -magnitude } else { magnitude })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dump of `testdata/dump_lines.py` by one interpreter: the first line, the table, and
    /// every instruction's byte offset with its line (`-` for none).
    fn check(format: LineTable, dump: &str) {
        let mut lines = dump.lines();
        let first_line: u32 = lines.next().unwrap().parse().unwrap();
        let hex = lines.next().unwrap();
        let table: Vec<u8> =
            (0..hex.len()).step_by(2).map(|at| u8::from_str_radix(&hex[at..at + 2], 16).unwrap()).collect();
        let mut checked = 0;
        for instruction in lines {
            let (offset, expected) = instruction.split_once(' ').unwrap();
            let offset: u64 = offset.parse().unwrap();
            let expected = (expected != "-").then(|| expected.parse::<u32>().unwrap());
            assert_eq!(line_at(format, &table, first_line, offset), expected, "offset {offset}");
            checked += 1;
        }
        assert!(checked > 60, "{checked} instructions");
    }

    #[test]
    fn python_3_8_lnotab() {
        check(LineTable::Lnotab, include_str!("testdata/lines-3.8.txt"));
    }

    #[test]
    fn python_3_9_lnotab() {
        check(LineTable::Lnotab, include_str!("testdata/lines-3.9.txt"));
    }

    #[test]
    fn python_3_10_pep_626_line_table() {
        check(LineTable::Pep626, include_str!("testdata/lines-3.10.txt"));
    }

    #[test]
    fn python_3_11_location_table() {
        check(LineTable::Locations, include_str!("testdata/lines-3.11.txt"));
    }

    #[test]
    fn python_3_12_location_table() {
        check(LineTable::Locations, include_str!("testdata/lines-3.12.txt"));
    }

    #[test]
    fn python_3_13_location_table() {
        check(LineTable::Locations, include_str!("testdata/lines-3.13.txt"));
    }

    #[test]
    fn a_cut_table_gives_no_line_rather_than_a_wrong_one() {
        // A long-form entry whose varint never ends.
        assert_eq!(line_at(LineTable::Locations, &[0xf0, 0x40], 10, 0), None);
        assert_eq!(line_at(LineTable::Locations, &[0x01], 10, 0), None);
        assert_eq!(line_at(LineTable::Pep626, &[4, 1], 10, 8), None);
    }
}
