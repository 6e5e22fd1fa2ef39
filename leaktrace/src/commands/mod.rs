//! One module per subcommand.
pub mod events;

/// Where a command's output went: a closed stdout (`leaktrace events | head`) is not an error.
pub fn is_broken_pipe(err: &std::io::Error) -> bool {
    err.kind() == std::io::ErrorKind::BrokenPipe
}
