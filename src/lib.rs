//! sunset: tell every user of a shutting-down product, in their own language, exactly once.
//!
//! The face is the nouns a program that embeds sunset (or publishes batches for it) builds
//! on, and the areas it assembles a worker from: the wire format (`batch`), the queue
//! (`broker`), the senders (`channel`), the configuration, the consume loop (`daemon`), the
//! ledger, the rate limits (`limit`, `shaping`), rendering and the worker step. Everything
//! else serves the `sunset` binary, which runs through [`run`].

pub mod batch;
pub mod broker;
pub mod channel;
pub mod config;
pub mod daemon;
pub mod enqueue;
pub mod ledger;
pub mod limit;
pub mod render;
pub mod shaping;
pub mod suppression;
pub mod worker;

mod app;
mod bidi;
mod campaign_list;
mod cli;
mod commands;
mod dates;
mod dead_letter;
mod dlq;
mod events;
mod exporter;
mod feedback;
mod invalid_input;
mod lint;
mod locale;
mod logging;
mod names;
mod preview;
mod progress;
mod results;
mod secret;
mod stdout;
mod suppress;
mod syntax;
mod template_options;
mod token;
mod variables;

pub use app::{exit_code, run};
pub use channel::Channel;
pub use cli::{Cli, Command};
pub use config::Config;
pub use locale::{Direction, Locales, TemplateLocale};
pub use preview::webmail;
pub use render::{Notice, Renderer, TemplateName, Vars};
pub use token::{Token, TokenKey};
