//! `sunset preview`: show a notice as a recipient would get it, write it out, lint templates,
//! or serve every locale side by side in the browser (`serve`).

mod grid;
mod guard;
mod page;
pub mod serve;
pub mod webmail;

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::Context as _;

use crate::batch::Recipient;
use crate::channel::Channel;
use crate::cli::PreviewArgs;
use crate::config::{Config, FeedbackConfig};
use crate::invalid_input::InvalidInput;
use crate::lint::{self, CheckFailed};
use crate::locale;
use crate::render::{self, Notice, Renderer, Sample, TemplateName, Vars};

/// Runs `sunset preview` with its arguments.
pub fn run(config: &Config, args: &PreviewArgs) -> anyhow::Result<()> {
    let dir = &config.templates.dir;
    let default_locale = &config.templates.default_locale;
    let template = args
        .template
        .as_deref()
        .map(TemplateName::parse)
        .transpose()?;
    if args.check {
        return check(dir, template.as_ref(), default_locale, &config.feedback);
    }
    let name = template.ok_or_else(|| InvalidInput("--template is required".into()))?;
    let channels = args.channel.map_or(Channel::ALL.to_vec(), |c| vec![c]);
    if args.out.is_some() && !channels.contains(&Channel::Email) {
        return Err(InvalidInput(
            "--out writes the email parts; it needs --channel email or no --channel".into(),
        )
        .into());
    }
    if let Some(tag) = &args.locale
        && locale::normalise(tag).is_none()
    {
        return Err(InvalidInput(format!("--locale `{tag}` is not a BCP 47 language tag")).into());
    }
    let renderer = Renderer::load(dir, &name, default_locale)?;
    let sample = Sample::load(&render::template_dir(dir, &name)?)?;
    let vars = campaign_vars(sample.vars, args.vars.as_deref())?;
    let requested: Vec<String> = if args.all_locales {
        renderer
            .locales()
            .iter()
            .map(|l| l.tag().to_string())
            .collect()
    } else {
        vec![
            args.locale
                .clone()
                .unwrap_or_else(|| default_locale.clone()),
        ]
    };
    let mut stdout = crate::stdout::Stdout;
    for tag in requested {
        let recipient = Recipient {
            locale: Some(tag.clone()),
            ..sample.recipient.clone()
        };
        let notice = renderer.render(&vars, &recipient, &channels)?;
        print_notice(&mut stdout, &name, &tag, &notice).context("Failed to write to stdout")?;
        if let (Some(out), Some(email)) = (&args.out, &notice.email) {
            fs::create_dir_all(out)
                .with_context(|| format!("Failed to create {}", out.display()))?;
            for (ext, body) in [("html", &email.html), ("txt", &email.text)] {
                let path = out.join(format!("{}.{ext}", notice.locale));
                write_whole(&path, body)?;
                eprintln!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}

/// Lints one template or all of them; prints one line per problem.
fn check(
    dir: &Path,
    template: Option<&TemplateName>,
    default_locale: &str,
    feedback: &FeedbackConfig,
) -> anyhow::Result<()> {
    let mut problems = match template {
        Some(name) => lint::check(dir, name, default_locale),
        None => lint::check_all(dir, default_locale),
    };
    let names = match template {
        Some(name) => vec![name.clone()],
        None => render::template_folders(dir)
            .unwrap_or_default()
            .iter()
            .filter_map(|name| TemplateName::parse(name).ok())
            .collect(),
    };
    for name in &names {
        problems.extend(lint::feedback_problems(dir, name, feedback));
    }
    for problem in &problems {
        eprintln!("{problem}");
    }
    if problems.is_empty() {
        let what = template.map_or_else(
            || format!("every template in {}", dir.display()),
            |t| t.to_string(),
        );
        crate::say!("ok: {what}")?;
        Ok(())
    } else {
        Err(CheckFailed {
            count: problems.len(),
        }
        .into())
    }
}

/// The campaign variables of `preview`, `enqueue` and `send` alike: the template's sample
/// variables, each top-level name a `--vars` file gives replaced by its value there.
pub fn campaign_vars(sample: Vars, file: Option<&Path>) -> anyhow::Result<Vars> {
    let mut vars = sample;
    if let Some(path) = file {
        vars.extend(read_vars(path)?);
    }
    Ok(vars)
}

/// A `--vars` file: one JSON object of campaign variables.
pub fn read_vars(path: &Path) -> anyhow::Result<Vars> {
    let text = fs::read_to_string(path)
        .map_err(|e| InvalidInput(format!("--vars {}: {e}", path.display())))?;
    serde_json::from_str::<Vars>(&text).map_err(|e| {
        InvalidInput(format!(
            "{}: not a JSON object of variables: {e}",
            path.display()
        ))
        .into()
    })
}

fn print_notice(
    out: &mut impl Write,
    name: &TemplateName,
    requested: &str,
    notice: &Notice,
) -> std::io::Result<()> {
    writeln!(
        out,
        "══ {name} · {} (requested {requested}) · {} ══",
        notice.locale, notice.dir
    )?;
    if let Some(email) = &notice.email {
        if let Some(from_name) = &email.from_name {
            writeln!(out, "From: {from_name}")?;
        }
        writeln!(out, "Subject: {}\n", email.subject)?;
        writeln!(out, "{}", email.text.trim_end())?;
    }
    if let Some(push) = &notice.push {
        writeln!(out, "\nPush title: {}", push.title)?;
        writeln!(out, "Push body:  {}", push.body)?;
    }
    writeln!(out)
}

/// Writes a file whole or not at all: a temporary file beside it, renamed into place. Neither
/// name is followed if it is a symbolic link (the temporary file is created anew, the rename
/// replaces a link rather than writing through it), so nothing lands outside the folder.
fn write_whole(path: &Path, contents: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("partial");
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("Failed to remove {}", tmp.display()));
        }
        _ => {}
    }
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut file| file.write_all(contents.as_bytes()))
        .with_context(|| format!("Failed to write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("Failed to move {} into place", path.display()))
}
