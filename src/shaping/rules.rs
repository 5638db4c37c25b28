//! Shaping rules as data: `shaping.toml` (shipped, compiled in) plus `rate.shaping_file`,
//! parsed and validated once at start; each rule says what a reply pattern means for a domain.

use std::path::Path;
use std::time::Duration;

use regex::{Regex, RegexBuilder};
use serde::Deserialize;

/// The shipped rules: provider reply codes of qq.com, 163.com, gmail.com, outlook.com,
/// yahoo.com and their sister domains.
const SHIPPED: &str = include_str!("../../shaping.toml");

/// Where the shipped rules come from, in error messages.
const SHIPPED_NAME: &str = "shaping.toml (built in)";

/// A rules file that cannot be used: which file, which line, what is wrong. A usage error.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {}{message}", line.map_or(String::new(), |line| format!("line {line}: ")))]
pub struct RulesError {
    /// The file, as given.
    pub file: String,
    /// 1-based line of the bad rule or of the syntax error; `None` when the file is unreadable.
    pub line: Option<usize>,
    /// What is wrong, naming the key.
    pub message: String,
}

/// What a matching reply is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// That recipient (a mailbox deferral, greylisting): retried, never slows the domain.
    Recipient,
    /// The domain (or relay) is throttling us: evidence toward slowing the domain.
    Domain,
}

/// What a domain-scope rule does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action {
    /// Nothing beyond retrying the recipient (recipient scope).
    None,
    /// Counts as throttle evidence; once the evidence passes the threshold the rate is
    /// multiplied by `factor`, or by less (down to [`DEEPEST_STEP`](super::DEEPEST_STEP)) when a
    /// larger share of attempts is refused.
    Slow { factor: f64 },
    /// Counts as evidence; once past the threshold the rate drops to at most `per_sec` and
    /// stays there for `hold`.
    SetRate { per_sec: f64, hold: Duration },
    /// No sends to the domain for `hold` (or, with `None`, for the wait the reply asks for,
    /// else [`DEFAULT_SUSPENSION`]), from the first matching reply: the provider asked.
    Suspend { hold: Option<Duration> },
}

/// How long a suspension lasts when neither the rule nor the reply says.
pub const DEFAULT_SUSPENSION: Duration = Duration::from_secs(60);

/// One validated rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Unique name: the `rule` label of `sunset_shaping_rule_fired_total`, and in logs.
    pub name: String,
    /// Matched, case-insensitively, against "CODE TEXT" of the reply.
    pattern: Regex,
    /// Lower-case domains the rule applies to; empty = every domain.
    domains: Vec<String>,
    /// What a match is about.
    pub scope: Scope,
    /// What a match does.
    pub action: Action,
}

impl Rule {
    /// Whether this rule applies to a reply `text` from `domain` (normalized).
    fn matches(&self, domain: &str, text: &str) -> bool {
        (self.domains.is_empty() || self.domains.iter().any(|d| d == domain))
            && self.pattern.is_match(text)
    }
}

/// The rules in force, in the order they are tried: the operator's first, then the shipped
/// ones; the first match decides.
#[derive(Debug, Clone, Default)]
pub struct Rules(Vec<Rule>);

impl Rules {
    /// The shipped rules, then (tried first) those of `file` if given; a rule of `file` with
    /// the name of a shipped one replaces it.
    pub fn load(file: Option<&Path>) -> Result<Rules, RulesError> {
        let shipped = parse(SHIPPED, SHIPPED_NAME)?;
        let Some(path) = file else {
            return Ok(Rules(shipped));
        };
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| RulesError {
            file: name.clone(),
            line: None,
            message: format!("cannot read rate.shaping_file: {e}"),
        })?;
        let mut rules = parse(&text, &name)?;
        let kept: Vec<Rule> = shipped
            .into_iter()
            .filter(|s| !rules.iter().any(|r| r.name == s.name))
            .collect();
        rules.extend(kept);
        Ok(Rules(rules))
    }

    /// Rules parsed from `text` alone (for tests and `Shaper`s built by hand).
    pub fn parse(text: &str, file: &str) -> Result<Rules, RulesError> {
        parse(text, file).map(Rules)
    }

    /// The first rule that applies to the reply `text` from `domain` (normalized).
    pub fn find(&self, domain: &str, text: &str) -> Option<&Rule> {
        self.0.iter().find(|rule| rule.matches(domain, text))
    }

    /// How many rules there are.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.len()
    }
}

/// The file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    rule: Vec<toml::Spanned<Spec>>,
}

/// One `[[rule]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    name: String,
    pattern: String,
    #[serde(default)]
    domains: Vec<String>,
    scope: Scope,
    action: Option<String>,
    factor: Option<f64>,
    rate: Option<f64>,
    duration_secs: Option<u64>,
}

fn parse(text: &str, file: &str) -> Result<Vec<Rule>, RulesError> {
    let error = |line: usize, message: String| RulesError {
        file: file.to_string(),
        line: Some(line),
        message,
    };
    let parsed: File = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(1, |span| line_of(text, span.start));
        error(line, e.message().to_string())
    })?;
    let mut rules: Vec<Rule> = Vec::with_capacity(parsed.rule.len());
    for spanned in parsed.rule {
        let line = line_of(text, spanned.span().start);
        let spec = spanned.into_inner();
        let rule = build(spec).map_err(|message| error(line, message))?;
        if rules.iter().any(|r| r.name == rule.name) {
            return Err(error(line, format!("rule `{}` is named twice", rule.name)));
        }
        rules.push(rule);
    }
    Ok(rules)
}

/// A rule from its spec, or what is wrong with it (naming the rule and key).
fn build(spec: Spec) -> Result<Rule, String> {
    let name = spec.name.trim().to_string();
    if name.is_empty() {
        return Err("key `name`: a rule needs a name".into());
    }
    let bad = |key: &str, what: String| format!("rule `{name}`: key `{key}`: {what}");
    if spec.pattern.is_empty() {
        return Err(bad(
            "pattern",
            "an empty pattern matches every reply".into(),
        ));
    }
    let pattern = RegexBuilder::new(&spec.pattern)
        .case_insensitive(true)
        .build()
        .map_err(|e| bad("pattern", one_line(&e.to_string())))?;
    let hold = spec.duration_secs.map(Duration::from_secs);
    if hold == Some(Duration::ZERO) {
        return Err(bad("duration_secs", "must be at least 1".into()));
    }
    let action = match (spec.scope, spec.action.as_deref()) {
        (Scope::Recipient, None | Some("none")) => Action::None,
        (Scope::Recipient, Some(other)) => {
            return Err(bad(
                "action",
                format!(
                    "`{other}`: a recipient-scope rule only retries the recipient (use scope = \"domain\")"
                ),
            ));
        }
        (Scope::Domain, None | Some("slow")) => {
            let factor = spec.factor.unwrap_or(super::DEFAULT_STEP);
            if !(MIN_FACTOR..=MAX_FACTOR).contains(&factor) {
                return Err(bad(
                    "factor",
                    format!("{factor} is outside {MIN_FACTOR}..={MAX_FACTOR}"),
                ));
            }
            Action::Slow { factor }
        }
        (Scope::Domain, Some("set_rate")) => {
            let per_sec = spec
                .rate
                .ok_or_else(|| bad("rate", "set_rate needs a rate (sends per second)".into()))?;
            if !(per_sec.is_finite() && per_sec > 0.0) {
                return Err(bad("rate", format!("{per_sec} is not a positive rate")));
            }
            let hold = hold.ok_or_else(|| bad("duration_secs", "set_rate needs one".into()))?;
            Action::SetRate { per_sec, hold }
        }
        (Scope::Domain, Some("suspend")) => Action::Suspend { hold },
        (Scope::Domain, Some(other)) => {
            return Err(bad(
                "action",
                format!("unknown action `{other}` (expected slow, set_rate, suspend or none)"),
            ));
        }
    };
    Ok(Rule {
        name,
        pattern,
        domains: spec.domains.iter().map(|d| super::normalize(d)).collect(),
        scope: spec.scope,
        action,
    })
}

/// The gentlest and the harshest `factor` a slow rule may have: a step is bounded.
const MIN_FACTOR: f64 = 0.1;
const MAX_FACTOR: f64 = 0.95;

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(0, |head| head.matches('\n').count())
        + 1
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_rules_are_valid() {
        let rules = Rules::load(None).expect("shipped rules");
        assert!(rules.len() >= 8);
    }

    #[test]
    fn a_bad_rule_is_reported_with_its_file_and_line() {
        let text = "[[rule]]\nname = \"ok\"\npattern = \"x\"\nscope = \"domain\"\n\n\
                    [[rule]]\nname = \"broken\"\npattern = \"(unclosed\"\nscope = \"domain\"\n";
        let error = Rules::parse(text, "mine.toml").expect_err("a bad pattern");
        assert_eq!((error.file.as_str(), error.line), ("mine.toml", Some(6)));
        assert!(
            error.message.contains("rule `broken`: key `pattern`"),
            "{error}"
        );
        let text =
            "[[rule]]\nname = \"x\"\npattern = \"x\"\nscope = \"domain\"\naction = \"explode\"\n";
        let error = Rules::parse(text, "mine.toml").expect_err("a bad action");
        assert_eq!(error.line, Some(1));
        assert!(
            error.message.contains("unknown action `explode`"),
            "{error}"
        );
        let text = "[[rule]]\nname = \"x\"\npattern = \"x\"\nscope = \"everywhere\"\n";
        let error = Rules::parse(text, "mine.toml").expect_err("a bad scope");
        assert_eq!(error.line, Some(4), "{error}");
    }

    #[test]
    fn rules_check_their_keys() {
        let rule = |extra: &str| {
            Rules::parse(
                &format!("[[rule]]\nname = \"r\"\npattern = \"x\"\n{extra}\n"),
                "f",
            )
            .map(|_| ())
            .map_err(|e| e.message)
        };
        assert!(rule("scope = \"domain\"\nfactor = 0.01").is_err());
        assert!(rule("scope = \"domain\"\naction = \"set_rate\"\nrate = 5.0").is_err());
        assert!(
            rule("scope = \"domain\"\naction = \"set_rate\"\nrate = 5.0\nduration_secs = 60")
                .is_ok()
        );
        assert!(rule("scope = \"recipient\"\naction = \"suspend\"").is_err());
        assert!(rule("scope = \"domain\"\naction = \"suspend\"\nduration_secs = 0").is_err());
        assert!(rule("scope = \"domain\"\ncolour = \"red\"").is_err());
    }

    #[test]
    fn an_operator_rule_comes_first_and_replaces_a_shipped_one_of_its_name() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("mine.toml");
        std::fs::write(
            &path,
            "[[rule]]\nname = \"netease-spam-deferral\"\npattern = \"DT:SPM\"\nscope = \"recipient\"\n",
        )
        .expect("write");
        let rules = Rules::load(Some(&path)).expect("rules");
        let rule = rules
            .find("163.com", "451 DT:SPM 163 smtp9")
            .expect("a match");
        assert_eq!(rule.scope, Scope::Recipient);
        assert_eq!(rules.len(), Rules::load(None).expect("shipped").len());
    }

    #[test]
    fn domains_limit_where_a_rule_applies() {
        let rules = Rules::load(None).expect("shipped rules");
        let qq = rules.find("qq.com", "421 Ip frequency limited");
        assert!(qq.is_some());
        assert!(rules.find("example.com", "550 HL:IFC").is_none());
    }
}
