//! Perf maps (`/tmp/perf-PID.map`): the text file JIT and interpreted runtimes write so that
//! profilers can name their generated code (Java with a perf-map agent, Node
//! `--perf-basic-prof`, Python 3.12+ `-X perf`). One line per symbol: `START SIZE NAME`, both
//! numbers in hex (with or without `0x`), addresses absolute in the process.
use std::{fs::File, io::Read, os::unix::fs::FileExt};

/// A parsed perf map.
#[derive(Debug, Default)]
pub struct PerfMap {
    /// `(start, end, name)`, sorted by start; a later line for the same start wins (runtimes
    /// append when they recompile).
    symbols: Vec<(u64, u64, String)>,
    /// How many bytes of the file were parsed: the file only grows, so a longer file is re-read.
    parsed_len: u64,
}

impl PerfMap {
    pub fn parse(text: &str) -> Self {
        let mut symbols: Vec<(u64, u64, String)> = text.lines().filter_map(parse_line).collect();
        // Stable sort, then keep the last of equal starts: the newest definition.
        symbols.sort_by_key(|(start, _, _)| *start);
        let mut deduped: Vec<(u64, u64, String)> = Vec::with_capacity(symbols.len());
        for symbol in symbols {
            match deduped.last_mut() {
                Some(last) if last.0 == symbol.0 => *last = symbol,
                _ => deduped.push(symbol),
            }
        }
        Self {
            symbols: deduped,
            parsed_len: text.len() as u64,
        }
    }

    /// Reads `file` (pinned when the process was captured) if it grew since the last read.
    pub fn refresh(&mut self, file: &File) -> std::io::Result<()> {
        let len = file.metadata()?.len();
        if len == self.parsed_len {
            return Ok(());
        }
        let mut bytes = Vec::with_capacity(len as usize);
        let mut offset = 0u64;
        let mut chunk = vec![0u8; 1 << 16];
        loop {
            let read = file.read_at(&mut chunk, offset)?;
            if read == 0 {
                break;
            }
            bytes.extend_from_slice(&chunk[..read]);
            offset += read as u64;
        }
        // Only whole lines: the runtime may be half-way through writing the last one.
        let whole = bytes
            .iter()
            .rposition(|&byte| byte == b'\n')
            .map_or(0, |newline| newline + 1);
        *self = Self::parse(&String::from_utf8_lossy(&bytes[..whole]));
        self.parsed_len = if whole == bytes.len() { len } else { 0 };
        Ok(())
    }

    /// Reads a whole perf map from a reader (tests, files opened by path).
    pub fn read(mut reader: impl Read) -> std::io::Result<Self> {
        let mut text = String::new();
        reader.read_to_string(&mut text)?;
        Ok(Self::parse(&text))
    }

    /// The name of the symbol holding `address`.
    pub fn lookup(&self, address: u64) -> Option<&str> {
        let index = self
            .symbols
            .partition_point(|(start, _, _)| *start <= address);
        let (_, end, name) = self.symbols.get(index.checked_sub(1)?)?;
        (address < *end).then_some(name.as_str())
    }

    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }
}

fn parse_line(line: &str) -> Option<(u64, u64, String)> {
    let mut fields = line.splitn(3, ' ');
    let start = hex(fields.next()?)?;
    let size = hex(fields.next()?)?;
    let name = fields.next()?.trim_end();
    (size > 0 && !name.is_empty()).then(|| (start, start.saturating_add(size), name.to_string()))
}

fn hex(text: &str) -> Option<u64> {
    u64::from_str_radix(text.strip_prefix("0x").unwrap_or(text), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_symbol_holding_an_address() {
        let map = PerfMap::parse(
            "7f0000001000 40 py::handle:/srv/app.py\n0x7f0000002000 0x20 LazyCompile:*dial net.js:10\nbad line\n",
        );
        assert_eq!(map.len(), 2);
        assert_eq!(map.lookup(0x7f00_0000_1000), Some("py::handle:/srv/app.py"));
        assert_eq!(map.lookup(0x7f00_0000_103f), Some("py::handle:/srv/app.py"));
        assert_eq!(map.lookup(0x7f00_0000_1040), None);
        assert_eq!(
            map.lookup(0x7f00_0000_2010),
            Some("LazyCompile:*dial net.js:10")
        );
        assert_eq!(map.lookup(0x1000), None);
    }

    #[test]
    fn a_later_definition_of_the_same_address_wins() {
        let map = PerfMap::parse("1000 10 old\n1000 10 new\n");
        assert_eq!(map.lookup(0x1008), Some("new"));
    }
}
