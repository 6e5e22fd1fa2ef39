//! One module per hook family. Each probe is a thin function that decodes its hook's
//! arguments and hands over to `lifecycle`.
pub mod accept;
pub mod go;
pub mod io_uring;
pub mod state;
