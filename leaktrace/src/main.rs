//! The leaktrace binary: parse the command line, run the command, map the outcome to exit
//! codes (0: no leak found, 1: leaks found, 2: error; a closed stdout is not an error).
use std::process::ExitCode;

use clap::Parser;
use leaktrace::{
    cli::{Cli, Command},
    agent, commands,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(format!("leaktrace={level}")))
        .format_target(false)
        .format_timestamp(None)
        .init();

    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("leaktrace: cannot start the async runtime: {err}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match &cli.command {
            None => commands::watch::run(&cli.watch).await,
            Some(Command::Events(args)) => commands::events::run(args).await.map(|()| false),
            Some(Command::Replay(args)) => commands::replay::run(args),
            Some(Command::Agent(args)) => agent::run(args).await,
            Some(Command::Diff(args)) => commands::diff::run(args),
        }
    });
    match result {
        Ok(false) => ExitCode::SUCCESS,
        Ok(true) => ExitCode::from(1),
        Err(err) => {
            eprintln!("leaktrace: {err:#}");
            ExitCode::from(2)
        }
    }
}
