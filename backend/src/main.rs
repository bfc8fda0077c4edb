//! The `amortize` binary: parses the command line and hands over to `cli/`.
//! Errors end here: one line on stderr and a non-zero exit, never a backtrace.

mod cli;

use clap::error::ErrorKind;
use clap::Parser;

fn main() -> std::process::ExitCode {
    // Before any other thread exists: the first writes the environment, and
    // every thread inherits the second's float mode.
    amortize::model::threads::pin();
    amortize::model::denormals::flush();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("AMORTIZE_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = match cli::Cli::try_parse() {
        Ok(a) => a,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => e.exit(),
        Err(e) => {
            // clap adds usage lines; keep the first, which names the problem.
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or("invalid arguments").trim_start_matches("error: ");
            eprintln!("error: {first} (see --help)");
            return std::process::ExitCode::from(2);
        }
    };
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<cli::Interrupted>() {
            Some(i) => {
                eprintln!("{i}");
                std::process::ExitCode::from(i.code)
            }
            None => {
                // `{:#}` prints the whole context chain on one line.
                eprintln!("error: {e:#}");
                std::process::ExitCode::from(1)
            }
        },
    }
}
