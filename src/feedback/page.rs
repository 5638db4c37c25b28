//! The unsubscribe pages: a confirmation with a button (a `GET` never unsubscribes: link
//! scanners fetch every link), the result, and the page for a link sunset does not know — in
//! the recipient's language and writing direction.

use std::sync::LazyLock;

use crate::locale::{Direction, Locales};

/// The languages the pages are written in; the first is the fallback.
const LANGUAGES: [&str; 4] = ["en", "zh", "zh-Hant", "ar"];

/// One language's texts.
struct Texts {
    title: &'static str,
    question: &'static str,
    button: &'static str,
    done: &'static str,
    unknown: &'static str,
}

fn texts(tag: &str) -> Texts {
    match tag {
        "zh" => Texts {
            title: "退订",
            question: "不再接收这些邮件？",
            button: "退订",
            done: "您已退订，不会再收到这些邮件。",
            unknown: "此退订链接无效或已过期。",
        },
        "zh-Hant" => Texts {
            title: "取消訂閱",
            question: "不再接收這些郵件？",
            button: "取消訂閱",
            done: "您已取消訂閱，不會再收到這些郵件。",
            unknown: "此取消訂閱連結無效或已過期。",
        },
        "ar" => Texts {
            title: "إلغاء الاشتراك",
            question: "هل تريد التوقف عن تلقي هذه الرسائل؟",
            button: "إلغاء الاشتراك",
            done: "تم إلغاء اشتراكك ولن تصلك هذه الرسائل بعد الآن.",
            unknown: "رابط إلغاء الاشتراك هذا غير صالح أو منتهي الصلاحية.",
        },
        _ => Texts {
            title: "Unsubscribe",
            question: "Stop receiving these emails?",
            button: "Unsubscribe",
            done: "You are unsubscribed and will not receive these emails again.",
            unknown: "This unsubscribe link is not valid or has expired.",
        },
    }
}

/// Which page to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// The question and a button that posts to the same URL.
    Confirm,
    /// The unsubscribe is recorded.
    Done,
    /// No such link.
    Unknown,
}

/// The page in the language `locale` negotiates to (English when none fits).
pub fn render(page: Page, locale: Option<&str>) -> String {
    static LOCALES: LazyLock<Option<Locales>> =
        LazyLock::new(|| Locales::new(LANGUAGES, LANGUAGES[0]).ok());
    let (tag, dir) = LOCALES
        .as_ref()
        .map(|locales| {
            let chosen = locales.negotiate(locale);
            (chosen.tag().to_string(), chosen.dir())
        })
        .unwrap_or_else(|| (LANGUAGES[0].to_string(), Direction::Ltr));
    let texts = texts(&tag);
    let body = match page {
        Page::Confirm => format!(
            "<p>{}</p>\n<form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" \
             value=\"One-Click\"><button type=\"submit\">{}</button></form>",
            texts.question, texts.button
        ),
        Page::Done => format!("<p>{}</p>", texts.done),
        Page::Unknown => format!("<p>{}</p>", texts.unknown),
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"{tag}\" dir=\"{}\">\n<head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><meta name=\"robots\" \
         content=\"noindex\"><title>{}</title></head>\n<body>\n<h1>{}</h1>\n{body}\n</body>\n</html>\n",
        dir.as_str(),
        texts.title,
        texts.title
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_the_recipients_language_and_direction() {
        let arabic = render(Page::Confirm, Some("ar_EG"));
        assert!(arabic.contains(r#"<html lang="ar" dir="rtl">"#), "{arabic}");
        assert!(arabic.contains(r#"<form method="post">"#), "{arabic}");
        let taiwan = render(Page::Done, Some("zh-TW"));
        assert!(taiwan.contains(r#"lang="zh-Hant" dir="ltr""#), "{taiwan}");
        assert!(render(Page::Done, Some("zh-CN")).contains(r#"lang="zh""#));
        for other in [Some("fr"), Some("not a tag"), None] {
            assert!(render(Page::Unknown, other).contains(r#"lang="en" dir="ltr""#));
        }
    }
}
