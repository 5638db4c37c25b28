//! The `sunset` binary: parse the command line, run it, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;
use sunset::Cli;

/// mimalloc: rendering is allocation-heavy (handlebars), and under glibc malloc allocation is a
/// quarter of it.
/// Built with `no_thp`: no transparent huge pages, so freed memory goes back in small pages and
/// a worker's peak RSS stays low.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match sunset::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(sunset::exit_code(&error))
        }
    }
}
