//! Writing to stdout where a reader that has gone (`sunset … | head -1`) ends the output, not
//! the command: `println!` panics on the broken pipe.

use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;

/// Set once a write found the pipe closed: nothing is written after it.
static CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes a line to stdout, as `println!` does; see [`print`].
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::stdout::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Writes `text` to stdout. Once the reader has gone, the rest of the output is dropped and the
/// command goes on to finish its work and exit as it would have; any other failure to write is
/// an error.
pub fn print(text: fmt::Arguments<'_>) -> anyhow::Result<()> {
    Stdout.write_fmt(text).context("Failed to write to stdout")
}

/// Stdout, with a broken pipe taken as the end of the output.
#[derive(Debug, Clone, Copy)]
pub struct Stdout;

impl Stdout {
    fn settle<T>(result: io::Result<T>, done: T) -> io::Result<T> {
        match result {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                CLOSED.store(true, Ordering::Relaxed);
                Ok(done)
            }
            other => other,
        }
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if CLOSED.load(Ordering::Relaxed) {
            return Ok(buf.len());
        }
        Stdout::settle(io::stdout().write(buf), buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if CLOSED.load(Ordering::Relaxed) {
            return Ok(());
        }
        Stdout::settle(io::stdout().flush(), ())
    }
}
