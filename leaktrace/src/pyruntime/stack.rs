//! A call stack with Python frames, as the tracker keys call sites by it: the native frames,
//! then [`PYTHON_BOUNDARY`], then each Python frame innermost first as two words (its code
//! object's address and its instruction). Two Python functions that reach `connect` through
//! the same C path are so two call sites, and one function's two call lines are two.
use crate::symbolize::{Frame, FrameRuntime};

/// Never a return address (the top of the address space, next to Go's boundary).
pub const PYTHON_BOUNDARY: u64 = u64::MAX - 1;

/// `native` then the Python frames `(code, instr)`, innermost first. A native walk through an
/// interpreter built without frame pointers may end on zero words (no caller found there): they
/// are no frames, and left out.
pub fn join(native: &[u64], python: impl ExactSizeIterator<Item = (u64, u64)>) -> Vec<u64> {
    let native = match native.iter().rposition(|&word| word != 0) {
        Some(last) => &native[..=last],
        None => &[],
    };
    let mut joined = Vec::with_capacity(native.len() + 1 + 2 * python.len());
    joined.extend_from_slice(native);
    joined.push(PYTHON_BOUNDARY);
    for (code, instr) in python {
        joined.extend([code, instr]);
    }
    joined
}

/// The native part of a call stack, and its Python frames `(code, instr)`.
pub fn split(stack: &[u64]) -> (&[u64], impl Iterator<Item = (u64, u64)> + '_) {
    let (native, python) = match stack.iter().position(|&word| word == PYTHON_BOUNDARY) {
        Some(at) => (&stack[..at], &stack[at + 1..]),
        None => (stack, &[][..]),
    };
    (native, python.chunks_exact(2).map(|pair| (pair[0], pair[1])))
}

/// A Python frame as the report shows it: named when `name` is known, else its code object's
/// address alone.
pub fn frame(code: u64, name: Option<&super::names::NamedFrame>) -> Frame {
    Frame {
        address: code,
        function: name.map(|name| name.function.clone()),
        file: name.map(|name| name.file.clone()),
        line: name.and_then(|name| name.line),
        module: None,
        inlined: false,
        recovered: false,
        spawned_by: None,
        runtime: Some(FrameRuntime::Python),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_joined_stack_splits_back() {
        let joined = join(&[0x401000, 0x402000], [(0x7f00, 0x7f40), (0x7e00, 12)].into_iter());
        assert_eq!(joined, [0x401000, 0x402000, PYTHON_BOUNDARY, 0x7f00, 0x7f40, 0x7e00, 12]);
        let (native, python) = split(&joined);
        assert_eq!(native, [0x401000, 0x402000]);
        assert_eq!(python.collect::<Vec<_>>(), [(0x7f00, 0x7f40), (0x7e00, 12)]);
        let (native, python) = split(&[0x401000]);
        assert_eq!((native, python.count()), (&[0x401000][..], 0));
    }

    #[test]
    fn zero_words_ending_the_native_walk_are_left_out() {
        let joined = join(&[0x401000, 0, 0], [(0x7f00, 0x7f40)].into_iter());
        assert_eq!(joined, [0x401000, PYTHON_BOUNDARY, 0x7f00, 0x7f40]);
        assert_eq!(join(&[0], [(0x7f00, 2)].into_iter()), [PYTHON_BOUNDARY, 0x7f00, 2]);
    }
}
