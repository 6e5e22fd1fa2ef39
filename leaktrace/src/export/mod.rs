//! Profiles of the report for the tools leak hunters already use: a pprof profile (`--pprof`,
//! the agent's `/debug/pprof/connections`) and a flame graph (`--flamegraph`), both of live
//! connections by the stack that opened them, both made from the [`Report`] alone. [`Exports`]
//! writes them for the live view ([`BackgroundExports`]) and the replay: checked writable before
//! tracing starts, rewritten whole at each refresh (a temporary file renamed over the old one,
//! so a reader never sees half a profile), and a last time with the final report.
pub mod flamegraph;
pub mod pprof;
pub mod profile_proto;

use std::{
    borrow::Cow,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use anyhow::Context;

use crate::{
    cli::ExportArgs,
    report::{CallSite, Report},
    symbolize::Frame,
};

/// The one frame a call site without a stack is shown with, saying why it has none (born
/// before start, or the kernel could not take it); `None` for a call site with frames.
pub fn stackless_frame(site: &CallSite) -> Option<String> {
    site.frames.is_empty().then(|| site.telling_frame_text())
}

/// What both profiles call a frame: its function, else (nothing could name it) its address and
/// module, as the table shows it, so that such frames stay apart. A Python frame is named as
/// the table names it, `handle_job (jobs.py:42)`: its line is what tells its call sites apart.
pub fn frame_name(frame: &Frame) -> Cow<'_, str> {
    match &frame.function {
        Some(_) if frame.runtime.is_some() => Cow::Owned(frame.short()),
        Some(function) => Cow::Borrowed(function),
        None => Cow::Owned(frame.short()),
    }
}

/// The files `--pprof` and `--flamegraph` name.
#[derive(Debug, Default)]
pub struct Exports {
    pprof: Option<PathBuf>,
    flamegraph: Option<PathBuf>,
}

impl Exports {
    /// Checks that each file can be written where it is asked for, before anything is traced.
    pub fn new(args: &ExportArgs) -> anyhow::Result<Self> {
        let exports = Self { pprof: args.pprof.clone(), flamegraph: args.flamegraph.clone() };
        for (flag, path) in exports.files() {
            check_writable(flag, path)?;
        }
        Ok(exports)
    }

    /// Writes every file asked for, each replaced whole.
    pub fn write(&self, report: &Report) -> anyhow::Result<()> {
        if let Some(path) = &self.pprof {
            replace("--pprof", path, &pprof::encode(report, SystemTime::now()))?;
        }
        if let Some(path) = &self.flamegraph {
            let svg = flamegraph::render(report).with_context(|| format!("--flamegraph {}: drawing the flame graph", path.display()))?;
            replace("--flamegraph", path, &svg)?;
        }
        Ok(())
    }

    fn files(&self) -> impl Iterator<Item = (&'static str, &Path)> {
        [("--pprof", self.pprof.as_deref()), ("--flamegraph", self.flamegraph.as_deref())]
            .into_iter()
            .filter_map(|(flag, path)| Some((flag, path?)))
    }
}

/// The live view's [`Exports`]: each refresh's files are made and written on a blocking thread,
/// off the event loop (a flame graph of thousands of call sites takes a while), one write at a
/// time: a refresh that finds the previous write still going leaves it be.
pub struct BackgroundExports {
    exports: Arc<Exports>,
    writing: Option<tokio::task::JoinHandle<()>>,
}

impl BackgroundExports {
    pub fn new(args: &ExportArgs) -> anyhow::Result<Self> {
        Ok(Self { exports: Arc::new(Exports::new(args)?), writing: None })
    }

    /// A refresh's write. A failure (a full disk) is said and the session goes on.
    pub fn refresh(&mut self, report: &Report) {
        if self.exports.files().next().is_none() || self.writing.as_ref().is_some_and(|writing| !writing.is_finished()) {
            return;
        }
        let exports = Arc::clone(&self.exports);
        let report = report.clone();
        self.writing = Some(tokio::task::spawn_blocking(move || {
            if let Err(err) = exports.write(&report) {
                log::warn!("{err:#}");
            }
        }));
    }

    /// The final write, after the last refresh's: an error this time.
    pub async fn finish(self, report: &Report) -> anyhow::Result<()> {
        if let Some(writing) = self.writing {
            let _ = writing.await;
        }
        self.exports.write(report)
    }
}

/// `FILE.tmp`, beside `FILE`: the rename that replaces `FILE` stays on one file system.
fn temporary(path: &Path) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(".tmp");
    PathBuf::from(name)
}

/// Whether `path` can be written (as a file in a writable directory), checked by writing a
/// file beside it: a mistake is told before anything is traced or loaded.
pub(crate) fn check_writable(flag: &str, path: &Path) -> anyhow::Result<()> {
    if path.is_dir() {
        anyhow::bail!("{flag} {}: is a directory; name a file", path.display());
    }
    let probe = temporary(path);
    fs::File::create(&probe)
        .with_context(|| format!("{flag} {}: cannot write {} (is the directory there and writable?)", path.display(), probe.display()))?;
    let _ = fs::remove_file(&probe);
    Ok(())
}

fn replace(flag: &str, path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let written = temporary(path);
    fs::write(&written, bytes).with_context(|| format!("{flag} {}: writing {}", path.display(), written.display()))?;
    fs::rename(&written, path).with_context(|| format!("{flag} {}: renaming {} over it", path.display(), written.display()))
}

#[cfg(test)]
mod tests;
