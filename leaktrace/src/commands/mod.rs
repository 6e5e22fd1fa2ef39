//! One module per subcommand, and what they share (the clock, the output, the inventory).
pub mod clock;
pub mod diff;
pub mod events;
pub(crate) mod inventory;
pub mod live;
pub mod replay;
mod view;
pub mod watch;

/// Where a command's output went: a closed stdout (`leaktrace events | head`) is not an error.
pub fn is_broken_pipe(err: &std::io::Error) -> bool {
    err.kind() == std::io::ErrorKind::BrokenPipe
}
