//! The interactive live view (ratatui on crossterm), used by the live view with `--format table`
//! on a terminal: the call sites' table, sortable, whose rows open into a call site's stack,
//! peers, lifetimes, reasons and trend. It draws at each refresh (one report per tick, the
//! live loop's) and at each key; keys are read on a thread of their own, so the tracer's loop
//! never waits for the terminal.
mod draw;
pub mod history;
pub mod state;
mod stderr;

use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use ratatui::{
    DefaultTerminal,
    crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
};
use tokio::sync::mpsc;

use self::{
    state::{Action, Key, State},
    stderr::StderrCapture,
};
use crate::report::Report;

/// What the terminal sent.
pub enum Input {
    Key(Key),
    /// The terminal's size changed: draw again.
    Resize,
    /// Reading the terminal failed: the view stops, the final report is printed.
    Failed(io::Error),
}

/// The terminal in raw mode on its alternate screen, and the view's state. Dropping it stops
/// the key reader and gives the terminal back as it was.
pub struct Tui {
    terminal: DefaultTerminal,
    state: State,
    inputs: mpsc::UnboundedReceiver<Input>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
    /// Log lines, kept off the screen while the view is up.
    stderr: Option<StderrCapture>,
}

impl Tui {
    pub fn start() -> io::Result<Self> {
        // Also installs a panic hook that restores the terminal before the panic is printed.
        let terminal = ratatui::try_init()?;
        let stderr = match StderrCapture::start() {
            Ok(capture) => capture,
            Err(err) => {
                ratatui::restore();
                return Err(io::Error::new(err.kind(), format!("diverting stderr while the view is up: {err}")));
            }
        };
        let (sender, inputs) = mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new().name("leaktrace-keys".into()).spawn(move || read_keys(&sender, &stop))?
        };
        let mut tui = Self { terminal, state: State::default(), inputs, stop, reader: Some(reader), stderr };
        tui.draw()?;
        Ok(tui)
    }

    /// A refresh: the new report is shown.
    pub fn refresh(&mut self, report: Report) -> io::Result<()> {
        self.state.update(report);
        self.draw()
    }

    /// The next input; never ready without a view, so a `select!` branch on it stays idle.
    pub async fn next(tui: Option<&mut Self>) -> Input {
        match tui {
            Some(tui) => tui.inputs.recv().await.unwrap_or(Input::Failed(io::Error::other("the key reader stopped"))),
            None => std::future::pending().await,
        }
    }

    /// Applies an input; returns whether the view was asked to quit.
    pub fn input(&mut self, input: Input) -> io::Result<bool> {
        match input {
            Input::Key(key) => {
                if self.state.key(key) == Action::Quit {
                    return Ok(true);
                }
            }
            Input::Resize => {}
            Input::Failed(err) => return Err(io::Error::new(err.kind(), format!("reading the terminal's keys: {err}"))),
        }
        self.draw()?;
        Ok(false)
    }

    fn draw(&mut self) -> io::Result<()> {
        let state = &mut self.state;
        let status = self.stderr.as_ref().and_then(StderrCapture::last_line);
        self.terminal.draw(|frame| draw::draw(frame, state, status.as_deref()))?;
        Ok(())
    }
}

impl Drop for Tui {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        ratatui::restore();
        // After the terminal is back: what was logged meanwhile is written out.
        self.stderr = None;
    }
}

/// Reads the terminal's events until `stop` is set, checking it every 100 ms.
fn read_keys(sender: &mpsc::UnboundedSender<Input>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let input = match event::poll(Duration::from_millis(100)) {
            Ok(false) => continue,
            Ok(true) => match event::read() {
                Ok(Event::Key(key)) => match to_key(key) {
                    Some(key) => Input::Key(key),
                    None => continue,
                },
                Ok(Event::Resize(..)) => Input::Resize,
                Ok(_) => continue,
                Err(err) => Input::Failed(err),
            },
            Err(err) => Input::Failed(err),
        };
        let failed = matches!(input, Input::Failed(_));
        if sender.send(input).is_err() || failed {
            return;
        }
    }
}

fn to_key(event: KeyEvent) -> Option<Key> {
    if event.kind == KeyEventKind::Release {
        return None;
    }
    Some(match event.code {
        // Raw mode turns Ctrl-C into a key rather than SIGINT.
        KeyCode::Char('c') if event.modifiers.contains(KeyModifiers::CONTROL) => Key::Interrupt,
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        KeyCode::Home => Key::Home,
        KeyCode::End => Key::End,
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc | KeyCode::Backspace | KeyCode::Left => Key::Back,
        _ => return None,
    })
}

#[cfg(test)]
pub(crate) mod tests;
