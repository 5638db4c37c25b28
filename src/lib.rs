//! sunset: tell every user of a shutting-down product, in their own language, exactly once.

pub mod batch;
pub mod bidi;
pub mod broker;
pub mod campaign_list;
pub mod channel;
pub mod cli;
pub mod commands;
pub mod daemon;
pub mod dates;
mod dead_letter;
pub mod dlq;
pub mod enqueue;
pub mod events;
pub mod exporter;
pub mod feedback;
mod invalid_input;
pub mod ledger;
pub mod limit;

pub mod config;
pub mod lint;
pub mod locale;
pub mod logging;
mod names;
pub mod preview;
pub mod progress;
pub mod render;
pub mod results;
pub mod secret;
pub mod shaping;
pub mod stdout;
pub mod suppress;
pub mod suppression;
pub mod syntax;
pub mod template_options;
pub mod token;
pub mod variables;
pub mod worker;

pub use channel::Channel;
pub use config::Config;
pub use locale::{Direction, Locales, TemplateLocale};
pub use render::{Notice, Renderer, TemplateName};
