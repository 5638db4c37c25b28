//! sunset: tell every user of a shutting-down product, in their own language, exactly once.

pub mod channel;
pub mod cli;
pub mod config;
pub mod lint;
pub mod locale;
pub mod preview;
pub mod render;

pub use channel::Channel;
pub use config::Config;
pub use locale::{Direction, Locales, TemplateLocale};
pub use render::{Notice, Renderer, TemplateName};
