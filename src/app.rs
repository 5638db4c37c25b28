//! One run of the `sunset` binary: load the config, start the runtime the command needs,
//! dispatch, and the exit code an error maps to.

use anyhow::Context as _;

use crate::cli::{Cli, Command};
use crate::config::{Config, ConfigError};
use crate::invalid_input::InvalidInput;
use crate::ledger::LedgerError;
use crate::lint::CheckFailed;
use crate::render::{BadTemplateName, RenderError, TemplateError};
use crate::results::Unfinished;
use crate::{commands, dlq, preview, suppress};

/// Runs the parsed command line to its end.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref())?;
    if let Command::Preview(args) = &cli.command
        && !args.serve
    {
        return preview::run(&config, args);
    }
    crate::logging::init();
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

/// 2 for anything the user must fix in their input (clap's convention), 3 for a `send` that
/// finished with recipients not reached, 128 + the signal for a stopped one, 1 for runtime
/// failures.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    if let Some(unfinished) = error.downcast_ref::<Unfinished>() {
        return unfinished.exit_code();
    }
    let invalid = error.chain().any(|cause| {
        cause.is::<InvalidInput>()
            || cause.is::<ConfigError>()
            || cause.is::<TemplateError>()
            || cause.is::<BadTemplateName>()
            || cause.is::<RenderError>()
            || cause.is::<CheckFailed>()
            || cause
                .downcast_ref::<LedgerError>()
                .is_some_and(LedgerError::is_usage)
    });
    if invalid { 2 } else { 1 }
}
