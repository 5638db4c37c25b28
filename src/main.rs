//! The `sunset` binary: parse the command line, load the config, dispatch, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;
use sunset::cli::{self, Cli, Command};
use sunset::{Config, preview};

/// mimalloc: rendering is allocation-heavy (handlebars), and glibc malloc was a quarter of it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(cli::exit_code(&error))
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Preview(args) => preview::run(&config, &args),
    }
}
