//! `ferrovod-run`: see the library docs.

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(ferrovod_runner::cli::main(std::env::args_os()).clamp(0, 255) as u8)
}
