//! The interactive live view as a user drives it: the real `leaktrace` in a real terminal (a
//! tmux pane), a real program leaking connections, keys sent to the pane and the screen read
//! back. The leaking call site's row is found, opened (its stack and the verdict's reason on
//! screen), and `q` gives the terminal back with the final report and exit status 1.
use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::MutexGuard,
    thread,
    time::{Duration, Instant},
};

use leaktrace_tests::{Puppet, cli::leaktrace_binary, require_privileges};

const PATIENCE: Duration = Duration::from_secs(60);

/// A detached tmux session on a server of its own, running one command in a 200x60 pane.
struct Pane {
    socket: String,
    stderr: PathBuf,
}

impl Pane {
    /// Runs `program ARGS` in the pane; stderr goes to a file (shown when the test fails), and
    /// when the program ends the pane says how, and stays.
    fn run(program: &Path, args: &[&str]) -> Self {
        // A server of its own per pane: a pane's server is killed when the pane is dropped, and
        // tmux may still be shutting it down when the next pane starts.
        static PANES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let nth = PANES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let socket = format!("leaktrace-test-{}-{nth}", std::process::id());
        let stderr = std::env::temp_dir().join(format!("{socket}.stderr"));
        let command = format!(
            "{} {} 2>{}; echo \"leaktrace exited with status $?\"; sleep 3600",
            program.display(),
            args.join(" "),
            stderr.display()
        );
        let pane = Self { socket, stderr };
        pane.tmux(&["-f", "/dev/null", "new-session", "-d", "-x", "200", "-y", "60", "-s", "view", &command]);
        pane
    }

    fn tmux(&self, args: &[&str]) -> String {
        let mut command = Command::new("tmux");
        command.args(["-L", &self.socket]);
        if args.first() != Some(&"-f") {
            command.args(["-f", "/dev/null"]);
        }
        let output = command.args(args).output().expect("tmux is needed here (cargo xtask setup --test-deps installs it)");
        assert!(output.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// What the pane shows now, line by line.
    fn screen(&self) -> Vec<String> {
        self.tmux(&["capture-pane", "-p", "-t", "view"]).lines().map(str::to_string).collect()
    }

    fn keys(&self, keys: &[&str]) {
        for key in keys {
            self.tmux(&["send-keys", "-t", "view", key]);
        }
    }

    /// Waits until the screen satisfies `check`; panics after [`PATIENCE`] with the screen and
    /// leaktrace's stderr.
    #[track_caller]
    fn wait_for(&self, what: &str, check: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let screen = self.screen();
            if check(&screen) {
                return screen;
            }
            if Instant::now() > deadline {
                let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
                panic!("the screen never showed {what} within {PATIENCE:?}:\n{}\nleaktrace's stderr:\n{stderr}", screen.join("\n"));
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Pane {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.socket, "kill-server"]).status();
        let _ = std::fs::remove_file(&self.stderr);
    }
}

/// Privileges (the tests take turns) and tmux, or why the test is skipped.
fn ready(test: &str) -> Option<MutexGuard<'static, ()>> {
    let guard = require_privileges(test)?;
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("skipped {test}: tmux is not installed (cargo xtask setup --test-deps installs it)");
        return None;
    }
    Some(guard)
}

#[test]
fn the_leaking_call_site_opens_to_its_stack_and_reason_and_q_prints_the_final_report() {
    let test = "the_leaking_call_site_opens_to_its_stack_and_reason_and_q_prints_the_final_report";
    let Some(_guard) = ready(test) else { return };
    let mut server = Puppet::spawn();
    let (listener, port) = server.listen("127.0.0.1");
    let mut client = Puppet::spawn();
    let pid = client.pid().to_string();
    // The client's connects and the server's accepts: two call sites, the client's row not
    // necessarily first.
    let binary = leaktrace_binary();
    let pane = Pane::run(&binary, &["--pid", &pid, "--pid", &server.pid().to_string(), "--interval", "0.5"]);
    pane.wait_for("the table", |screen| screen.iter().any(|line| line.contains("CALL SITE")));
    // A leak spread over four seconds: never closed, opened in distinct seconds.
    for _ in 0..4 {
        for _ in 0..5 {
            client.connect("127.0.0.1", port);
            server.accept(listener);
        }
        thread::sleep(Duration::from_millis(1000));
    }
    let is_leak_row = |line: &str| line.contains(&pid) && line.contains("connect") && line.contains("LEAK");
    pane.wait_for("the client's connect call site as a leak", |screen| screen.iter().any(|line| is_leak_row(line)));
    // Sorted by pid, the rows keep their order (by live, the client's and the server's tie).
    pane.keys(&["p"]);
    let screen = pane.wait_for("the rows sorted by pid", |screen| screen.iter().any(|line| line.contains("PID▼")));
    let heading = screen.iter().position(|line| line.contains("CALL SITE")).unwrap();
    let row = screen.iter().position(|line| is_leak_row(line)).unwrap() - heading - 1;
    // The selection follows its call site through the sort: from the first row, down to the leak.
    pane.keys(&["Home"]);
    pane.keys(&vec!["Down"; row]);
    pane.keys(&["Enter"]);
    let summary = format!("LEAK · pid {pid} sockpuppet");
    let detail = pane.wait_for("the call site's detail", |screen| {
        screen.iter().any(|line| line.starts_with(&summary)) && screen.iter().any(|line| line.contains("stack ("))
    });
    let text = detail.join("\n");
    assert!(text.contains("new_client"), "the stack shows the application's function:\n{text}");
    assert!(text.contains("=> "), "the telling frame is marked:\n{text}");
    let why = detail.iter().find(|line| line.trim_start().starts_with("why: ")).unwrap_or_else(|| panic!("no reason:\n{text}"));
    assert!(why.contains("opened"), "{why}");
    assert!(text.contains("peers (to)") && text.contains(&format!("127.0.0.1:{port}")), "its peer:\n{text}");

    pane.keys(&["?"]);
    pane.wait_for("the keys", |screen| screen.iter().any(|line| line.contains("quit and print the final report")));
    // Any key closes the keys; then Esc goes back (one key at a time: ESC and the byte after it
    // would read as one Alt-chord).
    pane.keys(&["j"]);
    pane.wait_for("the detail again", |screen| !screen.iter().any(|line| line.contains("quit and print the final report")));
    pane.keys(&["Escape"]);
    pane.wait_for("the table again", |screen| screen.iter().any(|line| line.contains("CALL SITE") && line.contains("TREND")));

    pane.keys(&["q"]);
    let last = pane.wait_for("leaktrace's exit", |screen| screen.iter().any(|line| line.starts_with("leaktrace exited")));
    let text = last.join("\n");
    assert!(text.contains("leaktrace exited with status 1"), "leaks found: exit 1\n{text}");
    // The final report, as `table::render_final` prints it: no TREND column (the plain table),
    // the leak with its reasons and stack.
    assert!(last.iter().any(|line| line.starts_with(&summary)), "the final report names the leak:\n{text}");
    assert!(last.iter().any(|line| line.trim_start().starts_with("why: ")), "{text}");
    assert!(text.contains("new_client") && !text.contains("TREND"), "{text}");
}

#[test]
fn plain_keeps_the_redrawing_table_on_a_terminal() {
    let test = "plain_keeps_the_redrawing_table_on_a_terminal";
    let Some(_guard) = ready(test) else { return };
    let mut server = Puppet::spawn();
    let (listener, port) = server.listen("127.0.0.1");
    let mut client = Puppet::spawn();
    let pid = client.pid().to_string();
    let pane = Pane::run(&leaktrace_binary(), &["--plain", "--pid", &pid, "--interval", "0.5"]);
    pane.wait_for("the plain table", |screen| screen.iter().any(|line| line.contains("CALL SITE")));
    for _ in 0..3 {
        client.connect("127.0.0.1", port);
        server.accept(listener);
    }
    let screen = pane.wait_for("the client's row", |screen| {
        screen.iter().any(|line| line.contains(&pid) && line.contains("connect") && line.trim_end().ends_with("OK"))
    });
    let text = screen.join("\n");
    assert!(screen[0].starts_with("leaktrace ") && screen[0].contains(" lost · "), "the plain table's header:\n{text}");
    assert!(!text.contains("TREND") && !text.contains("Enter open"), "not the interactive view:\n{text}");
    // Not in raw mode: Ctrl-C is SIGINT, as without a terminal.
    pane.keys(&["C-c"]);
    let last = pane.wait_for("leaktrace's exit", |screen| screen.iter().any(|line| line.starts_with("leaktrace exited")));
    let text = last.join("\n");
    assert!(text.contains("leaktrace exited with status 0"), "no leak: exit 0\n{text}");
    assert!(last.iter().any(|line| line.contains(&pid) && line.contains("connect")), "the final report:\n{text}");
}

#[test]
fn duration_ends_the_interactive_view_with_the_terminal_given_back() {
    let Some(_guard) = ready("duration_ends_the_interactive_view_with_the_terminal_given_back") else { return };
    let mut client = Puppet::spawn();
    let mut server = Puppet::spawn();
    let (listener, port) = server.listen("127.0.0.1");
    let pid = client.pid().to_string();
    let pane = Pane::run(&leaktrace_binary(), &["--pid", &pid, "--interval", "0.5", "--duration", "4"]);
    pane.wait_for("the interactive table", |screen| screen.iter().any(|line| line.contains("TREND")));
    client.connect("127.0.0.1", port);
    server.accept(listener);
    let last = pane.wait_for("leaktrace's exit", |screen| screen.iter().any(|line| line.starts_with("leaktrace exited")));
    let text = last.join("\n");
    assert!(text.contains("leaktrace exited with status 0"), "no leak: exit 0\n{text}");
    assert!(last[0].starts_with("leaktrace "), "the final report from the top of the screen:\n{text}");
    assert!(last.iter().any(|line| line.contains(&pid) && line.contains("connect")), "the final report:\n{text}");
    assert!(!text.contains("TREND") && !text.contains("kernel: "), "the view is gone:\n{text}");
}

#[test]
fn ctrl_c_and_sigterm_end_the_interactive_view_as_q_does() {
    let Some(_guard) = ready("ctrl_c_and_sigterm_end_the_interactive_view_as_q_does") else { return };
    let mut client = Puppet::spawn();
    let mut server = Puppet::spawn();
    let (listener, port) = server.listen("127.0.0.1");
    let pid = client.pid().to_string();
    for ending in ["Ctrl-C", "SIGTERM"] {
        let marker = format!("--comm=sockpuppet-{}", ending.to_lowercase());
        // A --comm of its own marks this run's command line, for finding its pid.
        let pane = Pane::run(&leaktrace_binary(), &["--pid", &pid, "--interval", "0.5", "--comm", "sockpuppet", &marker]);
        pane.wait_for("the interactive table", |screen| screen.iter().any(|line| line.contains("TREND")));
        client.connect("127.0.0.1", port);
        server.accept(listener);
        match ending {
            // In the view's raw mode Ctrl-C is a key, not a signal.
            "Ctrl-C" => pane.keys(&["C-c"]),
            _ => {
                let pattern = format!("^{} .*{marker}", leaktrace_binary().display());
                let found = Command::new("pgrep").args(["-f", &pattern]).output().unwrap();
                let leaktrace: i32 = String::from_utf8_lossy(&found.stdout).lines().next().expect("leaktrace's pid").parse().unwrap();
                // SAFETY: plain kill(2).
                assert_eq!(unsafe { libc::kill(leaktrace, libc::SIGTERM) }, 0);
            }
        }
        let last = pane.wait_for("leaktrace's exit", |screen| screen.iter().any(|line| line.starts_with("leaktrace exited")));
        let text = last.join("\n");
        assert!(text.contains("leaktrace exited with status 0"), "{ending}: exit 0\n{text}");
        assert!(last[0].starts_with("leaktrace "), "{ending}: the final report from the top of the screen:\n{text}");
        assert!(!text.contains("TREND"), "{ending}: the view is gone:\n{text}");
    }
}
