//! `ferrovod-run`: parse, run, map the result to an exit code. See the library docs.

use std::process::ExitCode;

use clap::Parser;
use ferrovod_runner::cli::{Cli, normalize_args};

fn main() -> ExitCode {
    let cli = Cli::parse_from(normalize_args(std::env::args_os()));
    let verbose = cli.verbose;
    let code = match cli.into_launch().and_then(|launch| ferrovod_runner::run(&launch)) {
        Ok(report) => {
            if report.exit_code() != 0 || verbose >= 1 {
                ferrovod_runner::launch::say(&report.summary());
            }
            report.exit_code()
        }
        Err(e) => {
            ferrovod_runner::launch::say(&e.to_string());
            e.exit_code()
        }
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}
