//! The command line of `ferrovod-run`.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::FalseyValueParser;
use clap::{ArgAction, Parser};

use crate::error::Error;
use crate::output::OutputOptions;
use crate::settings::{Launch, Mode};

const AFTER_HELP: &str = "\
Each process gets FERROVOD_RANK, FERROVOD_SIZE, FERROVOD_LOCAL_RANK, FERROVOD_LOCAL_SIZE,
FERROVOD_CROSS_RANK, FERROVOD_CROSS_SIZE, FERROVOD_RENDEZVOUS, FERROVOD_SECRET, the torchrun
names RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT, horovodrun's
HOROVOD_RANK, HOROVOD_SIZE, HOROVOD_LOCAL_RANK, HOROVOD_LOCAL_SIZE, HOROVOD_CROSS_RANK,
HOROVOD_CROSS_SIZE, and CUDA_VISIBLE_DEVICES with its host's GPUs in local-rank order, so that
torch.cuda.set_device(local_rank) picks its own (empty on CPU tasks of a plan; left as inherited
in local mode without --gpus). The job secret is FERROVOD_SECRET from the launcher's environment, or
generated; it never appears on a command line.

Exit status: 0 when every process exited 0; otherwise the first failing rank's exit code
(128 + N when signal N killed it), 128 + N when the launcher received signal N, 2 for a bad
command line or plan (nothing is started), 126/127 when the command cannot be executed or
found, 1 for other launcher errors.

Examples:
  ferrovod-run -np 4 -- python train.py --epochs 3
  ferrovod-run -np 2 --gpus 0,1 -- python train.py
  ferrovod-run --plan plan.json -- python train.py
  ferrovod-run --plan - --listen-fd 3 -- python -m my.worker   (task 0 of a Spark barrier stage)";

/// ferrovod-run: start one training process per GPU (or per slot), give each its place in the
/// job, forward their output, and end the job cleanly on success, on the first failure, on a
/// signal, or when whatever started the launcher dies.
#[derive(Debug, Parser)]
#[command(name = "ferrovod-run", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Local mode: start N processes on this host (also -np N, as with mpirun).
    #[arg(short = 'n', long = "np", visible_alias = "num-proc", value_name = "N", conflicts_with = "plan")]
    pub np: Option<usize>,

    /// Plan mode: read the barrier plan (JSON, see the crate docs) from PATH, or from standard
    /// input with `-`.
    #[arg(long, value_name = "PATH|-")]
    pub plan: Option<PathBuf>,

    /// Plan mode, task 0: serve the rendezvous store on this inherited socket, already bound and
    /// listening on the plan's rendezvous port, instead of binding the address itself.
    #[arg(long, value_name = "FD", requires = "plan")]
    pub listen_fd: Option<i32>,

    /// Write every failure and the final report as JSON lines to this inherited descriptor
    /// (the schema is in the crate docs, module `events`).
    #[arg(long, value_name = "FD")]
    pub events_fd: Option<i32>,

    /// With --events-fd: send each rank's output lines through it as `output` events instead of
    /// writing them to the launcher's stdout and stderr.
    #[arg(long, requires = "events_fd")]
    pub events_output: bool,

    /// Local mode: GPU ids (comma-separated), one process per GPU; each sees the list through
    /// CUDA_VISIBLE_DEVICES and its own is cuda:<local_rank>. -np defaults to their number.
    #[arg(long, value_name = "LIST", value_delimiter = ',', conflicts_with = "plan")]
    pub gpus: Option<Vec<u32>>,

    /// Also write each rank's output, without prefix, to DIR/rank.N/stdout and DIR/rank.N/stderr.
    #[arg(long, value_name = "DIR", env = ferrovod::config::OUTPUT_DIR.name)]
    pub output_dir: Option<PathBuf>,

    /// Forward the processes' output lines without the `[rank]` prefix.
    #[arg(long, env = ferrovod::config::NO_PREFIX.name, value_parser = FalseyValueParser::new())]
    pub no_prefix: bool,

    /// Seconds between asking processes to stop (SIGTERM, or the signal the launcher received)
    /// and killing them (SIGKILL), process groups included.
    #[arg(long, value_name = "SECS", env = ferrovod::config::GRACE_PERIOD.name, default_value = ferrovod::config::GRACE_PERIOD.default, value_parser = parse_secs)]
    pub grace_period: Duration,

    /// Seconds to wait for the rendezvous store, for task 0's launcher, and for the plan (from
    /// standard input, a FIFO, ...) to be written and closed.
    #[arg(
        long,
        value_name = "SECS",
        env = ferrovod::config::CONNECT_TIMEOUT.name,
        default_value = ferrovod::config::CONNECT_TIMEOUT.default,
        value_parser = parse_secs
    )]
    pub connect_timeout: Duration,

    /// Plan mode, task 0: seconds to keep serving the store after this task's processes ended,
    /// until every other task's launcher is done with it.
    #[arg(long, value_name = "SECS", env = ferrovod::config::STORE_LINGER.name, default_value = ferrovod::config::STORE_LINGER.default, value_parser = parse_secs)]
    pub store_linger: Duration,

    /// Keep the job running when the launcher's parent process dies. By default the job is
    /// stopped: a cancelled Spark task must not leave processes behind.
    #[arg(long, env = ferrovod::config::NO_WATCH_PARENT.name, value_parser = FalseyValueParser::new())]
    pub no_watch_parent: bool,

    /// More messages on stderr: -v for the start and end of the job, -vv for every event.
    /// FERROVOD_VERBOSE=N sets the level.
    #[arg(short, long, action = ArgAction::Count, env = ferrovod::config::VERBOSE.name)]
    pub verbose: u8,

    /// The program to start in every process, and its arguments (after `--`).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() && v < 1e9 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!("{} is not a number of seconds", crate::error::quoted(s))),
    }
}

/// Rewrites mpirun's `-np N` (and `-np=N`) into `--np N` among the launcher's own options,
/// since clap's short options are single letters. The command starts at `--` or at the first
/// argument that is neither an option nor an option's value, and is left as it is.
pub fn normalize_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    /// The launcher's options that take a separate value.
    const WITH_VALUE: &[&str] = &[
        "-np",
        "-n",
        "--np",
        "--num-proc",
        "--plan",
        "--listen-fd",
        "--events-fd",
        "--gpus",
        "--output-dir",
        "--grace-period",
        "--connect-timeout",
        "--store-linger",
    ];
    let mut out = Vec::new();
    let mut in_command = false;
    let mut value_next = false;
    for (i, a) in args.into_iter().enumerate() {
        if i == 0 || in_command {
            out.push(a);
            continue;
        }
        if value_next {
            value_next = false;
            out.push(a);
            continue;
        }
        let text = a.to_str().unwrap_or("");
        if a == "--" || !text.starts_with('-') {
            in_command = true;
            out.push(a);
            continue;
        }
        value_next = WITH_VALUE.contains(&text);
        if a == "-np" {
            out.push(OsString::from("--np"));
        } else if let Some(v) = text.strip_prefix("-np=") {
            out.push(OsString::from(format!("--np={v}")));
        } else {
            out.push(a);
        }
    }
    out
}

impl Cli {
    /// Checks what clap cannot and builds the launcher's settings.
    pub fn into_launch(self) -> Result<Launch, Error> {
        let mode = match (self.plan, self.np, self.gpus) {
            (Some(p), _, _) => Mode::Plan(if p.as_os_str() == "-" { None } else { Some(p) }),
            (None, Some(np), gpus) => Mode::Local { np, gpus },
            (None, None, Some(gpus)) => Mode::Local { np: gpus.len(), gpus: Some(gpus) },
            (None, None, None) => {
                return Err(Error::Usage("give -np N (local mode) or --plan PATH|- (plan mode); see --help".into()));
            }
        };
        Ok(Launch {
            mode,
            command: self.command,
            listen_fd: self.listen_fd,
            events_fd: self.events_fd,
            events_output: self.events_output,
            output: OutputOptions {
                prefix: !self.no_prefix,
                dir: self.output_dir,
                rank_width: 1,
                events: crate::events::Events::disabled(),
            },
            grace: self.grace_period,
            connect_timeout: self.connect_timeout,
            store_linger: self.store_linger,
            watch_parent: !self.no_watch_parent,
            verbose: self.verbose,
        })
    }
}

/// The whole command: parse `args` (program name first), run, report, and return the exit code
/// (clap prints help or a usage error and exits itself). `ferrovod-run` and the Python
/// package's console script both come here.
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> i32 {
    let cli = match Cli::try_parse_from(normalize_args(args)) {
        Ok(cli) => cli,
        // clap quotes the offending value whole: cut every long line of its message.
        Err(e) if e.use_stderr() => {
            let text = e.to_string();
            let lines: Vec<String> = text.lines().map(crate::error::cut).collect();
            let _ = writeln!(std::io::stderr().lock(), "{}", lines.join("\n").trim_end());
            return e.exit_code();
        }
        Err(e) => e.exit(),
    };
    let verbose = cli.verbose;
    match cli.into_launch().and_then(|launch| crate::run(&launch)) {
        Ok(report) => {
            if report.exit_code() != 0 || verbose >= 1 {
                crate::report::say(&report.summary());
            }
            report.exit_code()
        }
        Err(e) => {
            crate::report::say(&e.to_string());
            e.exit_code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn np_is_rewritten_only_before_the_command() {
        let got = normalize_args(os(&["ferrovod-run", "-np", "4", "--", "cmd", "-np", "2"]));
        assert_eq!(got, os(&["ferrovod-run", "--np", "4", "--", "cmd", "-np", "2"]));
        assert_eq!(normalize_args(os(&["x", "-np=3", "cmd"])), os(&["x", "--np=3", "cmd"]));
        // Without `--`, the command starts at the first argument that is not an option's.
        assert_eq!(
            normalize_args(os(&["x", "-np", "2", "-v", "tool", "-np", "4"])),
            os(&["x", "--np", "2", "-v", "tool", "-np", "4"])
        );
        assert_eq!(
            normalize_args(os(&["x", "--output-dir", "d", "-np", "2", "tool", "-np=4"])),
            os(&["x", "--output-dir", "d", "--np", "2", "tool", "-np=4"])
        );
    }

    #[test]
    fn command_may_follow_without_separator() {
        let cli =
            Cli::try_parse_from(normalize_args(os(&["ferrovod-run", "-np", "2", "python", "-u", "t.py"]))).unwrap();
        assert_eq!(cli.np, Some(2));
        assert_eq!(cli.command, os(&["python", "-u", "t.py"]));
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
