//! The `patchcore` command-line tool: fit a model on a folder of good parts, score new images,
//! evaluate on a labelled MVTec-style folder, and dump backbone features.
//!
//! Exit codes: 0 success, 1 failure (a file that cannot be read or written, a broken image, a
//! model that does not fit its weights, ...), 2 usage error (unknown option, bad option value or
//! combination — everything that is wrong with the command line itself). Messages go to stderr
//! and name the file or option concerned; results go to stdout.

mod args;
mod calibrate;
mod cleanup;
mod common;
mod demo;
mod embed;
mod eval;
mod fit;
mod names;
mod outputs;
mod predict;
mod progress;
mod update;
mod weights;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};
use common::CliError;

fn main() -> ExitCode {
    // A bug must still end with a readable message and exit code 1, not a panic trace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info
            .location()
            .map(|l| format!(" ({}:{})", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("internal error: {msg}{at}; this is a bug in patchcore, please report it");
    }));
    // SIGINT / SIGTERM remove this run's temporary files before the process ends.
    cleanup::install();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // Help and version go to stdout with exit code 0; everything else is a usage error.
            let usage = e.use_stderr();
            let _ = e.print();
            return if usage {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = std::panic::catch_unwind(|| match cli.command {
        Command::Fit(a) => fit::run(a),
        Command::Predict(a) => predict::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Embed(a) => embed::run(a),
        Command::Weights(a) => weights::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Update(a) => update::run(a),
    });
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            match &e {
                CliError::Usage(m) => {
                    eprintln!("error: {m}\n\nFor more information, try '--help'.")
                }
                CliError::Failed(m) => eprintln!("error: {m}"),
                CliError::BrokenPipe => {}
            }
            ExitCode::from(e.exit_code())
        }
        Err(_) => ExitCode::from(1),
    }
}
