//! The `sunset` binary: parse the command line, load the config, dispatch, map errors to exit codes.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use sunset::cli::{self, Cli, Command};
use sunset::{Config, commands, dlq, preview, suppress};

/// mimalloc: rendering is allocation-heavy (handlebars), and under glibc malloc allocation is a
/// quarter of it.
/// Built with `no_thp`: no transparent huge pages, so freed memory goes back in small pages and
/// a worker's peak RSS stays low.
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
    if let Command::Preview(args) = &cli.command
        && !args.serve
    {
        return preview::run(&config, args);
    }
    sunset::logging::init();
    // After the logger: loading the key warns when the signature would not align with From.
    if let Command::DkimRecord = &cli.command {
        return commands::dkim_record(&config);
    }
    let runtime = match &cli.command {
        // One thread: a worker's sends are I/O-bound and rendering is short, and a single
        // thread saves the work-stealing scheduler's CPU (a quarter to a third of the worker's)
        // and its per-thread memory. More throughput comes from more worker processes.
        Command::Worker(_) | Command::Send(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build()
    .context("Failed to start the async runtime")?;
    runtime.block_on(async {
        match &cli.command {
            Command::Preview(args) => commands::preview_serve(&config, args).await,
            Command::Topology => commands::topology(&config).await,
            Command::Enqueue(args) => commands::enqueue(&config, args).await,
            Command::Worker(args) => commands::worker(&config, args).await,
            Command::Send(args) => commands::send(&config, args).await,
            Command::Dlq { action } => dlq::run(&config, action).await,
            Command::Status(args) => commands::status(&config, args).await,
            Command::Campaign { action } => commands::campaign(&config, action).await,
            Command::Feedback => commands::feedback(&config).await,
            Command::Suppress { action } => suppress::run(&config, action).await,
            Command::DkimRecord => commands::dkim_record(&config),
        }
    })
}
