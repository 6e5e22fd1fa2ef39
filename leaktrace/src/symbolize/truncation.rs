//! Stacks cut short (issue 4 item 7). The kernel walks user stacks by frame pointers: code
//! built without them (most C/C++ at -O2, libc's own functions) ends the walk early or sends it
//! into garbage. A stack is marked truncated when it does not reach the root every thread
//! starts from (`_start`/`__libc_start_main` for the main thread, `start_thread`/`clone3` for
//! others, `runtime.goexit` for a goroutine), when its outermost address lies in no executable
//! mapping (a garbage return address), or when it fills the kernel's depth limit.
use super::Frame;

/// Functions a whole stack ends in (its outermost frame), by language runtime.
const ROOTS: &[&str] = &[
    "_start",
    "__libc_start_main",
    "__libc_start_call_main",
    "__libc_start_main_impl",
    "start_thread",
    "clone",
    "clone3",
    "__clone",
    "__clone3",
    "__clone_internal",
    "thread_start",
    // Go: every goroutine's stack ends in goexit, the scheduler's threads in mstart.
    "runtime.goexit",
    "runtime.goexit.abi0",
    "runtime.mstart",
    "runtime.mstart.abi0",
    "runtime.rt0_go",
    "runtime.rt0_go.abi0",
    // musl.
    "libc_start_main_stage2",
    "start_c",
];

/// Whether `function` is one every stack of some thread ends in.
pub fn is_root(function: &str) -> bool {
    ROOTS.contains(&function)
}

/// Whether the walk that produced `frames` (from `depth` raw addresses, the kernel's limit
/// being `max_depth`) is known to have stopped before the thread's root.
pub fn is_truncated(frames: &[Frame], depth: usize, max_depth: usize) -> bool {
    if depth >= max_depth {
        return true;
    }
    let Some(outermost) = frames.last() else {
        return false;
    };
    match (&outermost.function, &outermost.module) {
        (Some(function), _) => !ROOTS.contains(&function.as_str()),
        // An address in no mapping at all is not a return address: the walk went astray.
        (None, None) => true,
        // Unnamed code in a known file: nothing says either way.
        (None, Some(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: Option<&str>, module: Option<&str>) -> Frame {
        Frame {
            runtime: None,
            address: 0x1000,
            function: function.map(str::to_string),
            file: None,
            line: None,
            module: module.map(str::to_string),
            inlined: false,
            recovered: false,
            spawned_by: None,
        }
    }

    #[test]
    fn a_stack_that_reaches_its_root_is_whole() {
        let libc = Some("/usr/lib/x86_64-linux-gnu/libc.so.6");
        let stack = [
            frame(Some("__connect"), libc),
            frame(Some("main"), Some("/bin/app")),
            frame(Some("__libc_start_call_main"), libc),
        ];
        assert!(!is_truncated(&stack, 3, 127));
        let goroutine = [
            frame(Some("net.Dial"), Some("/bin/app")),
            frame(Some("runtime.goexit.abi0"), Some("/bin/app")),
        ];
        assert!(!is_truncated(&goroutine, 2, 127));
    }

    #[test]
    fn a_stack_that_stops_in_the_middle_or_in_garbage_is_truncated() {
        let libc = Some("/usr/lib/x86_64-linux-gnu/libc.so.6");
        assert!(is_truncated(
            &[
                frame(Some("__connect"), libc),
                frame(Some("dial"), Some("/bin/app"))
            ],
            2,
            127
        ));
        assert!(is_truncated(
            &[frame(Some("__connect"), libc), frame(None, None)],
            2,
            127
        ));
        // A full-depth stack was cut by the kernel's limit, whatever it ends in.
        assert!(is_truncated(
            &[frame(Some("_start"), Some("/bin/app"))],
            127,
            127
        ));
    }
}
