//! Rendering throughput of the `xiami-shutdown` template: one notice per locale.
//!
//! - `notice_full/<locale>`: email and push channels (subject, text, HTML, push title and body).
//! - `notice_text/<locale>`: the text parts only (subject, plain text, push title and body),
//!   rendered part by part as `Renderer::render` does, context included.
//! - `notice_full_negotiated/<requested>`: full notice for a requested tag that is not a folder
//!   name (`ar-EG`, `zh-TW`), so locale negotiation falls back to likely subtags.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sunset::Channel;
use sunset::batch::Recipient;
use sunset::render::{Part, Renderer, Sample, TemplateName, context, template_dir};

/// The allocator the `sunset` binary uses, so the numbers are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const FULL: [Channel; 2] = [Channel::Email, Channel::Push];
const TEXT_PARTS: [Part; 4] = [Part::Subject, Part::Text, Part::PushTitle, Part::PushBody];

fn fixture() -> (Renderer, Sample) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    let name = TemplateName::parse("xiami-shutdown").expect("template name");
    let renderer = Renderer::load(&dir, &name, "en").expect("load template");
    let sample = Sample::load(&template_dir(&dir, &name).expect("template dir")).expect("sample");
    (renderer, sample)
}

fn recipient(sample: &Sample, tag: &str) -> Recipient {
    Recipient {
        locale: Some(tag.to_string()),
        ..sample.recipient.clone()
    }
}

fn bench_group(c: &mut Criterion, group_name: &str, channels: &[Channel], requested: &[String]) {
    let (renderer, sample) = fixture();
    let mut group = c.benchmark_group(group_name);
    group
        .throughput(Throughput::Elements(1))
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for tag in requested {
        let recipient = recipient(&sample, tag);
        // Fail loudly before measuring if the notice does not render.
        let notice = renderer
            .render(&sample.vars, &recipient, channels)
            .expect("render notice");
        assert_eq!(notice.email.is_some(), channels.contains(&Channel::Email));
        assert_eq!(notice.push.is_some(), channels.contains(&Channel::Push));
        group.bench_with_input(BenchmarkId::from_parameter(tag), &recipient, |b, r| {
            b.iter(|| {
                renderer
                    .render(black_box(&sample.vars), black_box(r), black_box(channels))
                    .expect("render notice")
            });
        });
    }
    group.finish();
}

fn locale_tags() -> Vec<String> {
    let (renderer, _) = fixture();
    renderer
        .locales()
        .iter()
        .map(|l| l.tag().to_string())
        .collect()
}

fn notice_full(c: &mut Criterion) {
    bench_group(c, "notice_full", &FULL, &locale_tags());
}

fn notice_text(c: &mut Criterion) {
    let (renderer, sample) = fixture();
    let mut group = c.benchmark_group("notice_text");
    group
        .throughput(Throughput::Elements(1))
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for locale in renderer.locales().iter() {
        let recipient = recipient(&sample, locale.tag());
        group.bench_with_input(
            BenchmarkId::from_parameter(locale.tag()),
            &recipient,
            |b, r| {
                b.iter(|| {
                    let context = context(black_box(&sample.vars), black_box(r));
                    TEXT_PARTS.map(|part| {
                        renderer
                            .render_part(locale, part, &context)
                            .expect("render part")
                    })
                });
            },
        );
    }
    group.finish();
}

fn notice_full_negotiated(c: &mut Criterion) {
    let requested = ["ar-EG".to_string(), "zh-TW".to_string()];
    bench_group(c, "notice_full_negotiated", &FULL, &requested);
}

criterion_group!(benches, notice_text, notice_full, notice_full_negotiated);
criterion_main!(benches);
