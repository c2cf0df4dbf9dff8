//! Item 7: image sizes (when the images exist; this harness never builds them) and each
//! service's start-to-ready time: from spawning the release binary to its first `/readyz`
//! 200, polled every 5 ms. The checker is ready when the broker answers a metadata request for
//! its (existing) topic; the sink when PostgreSQL and the broker answer. The sink is timed on
//! a database that already has its schema (a restart) and on an empty one (first start,
//! migrations included).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::report::{num, Figure};
use crate::setup::{self, Service};
use crate::Ctx;

/// Image sizes.
pub async fn images(ctx: &mut Ctx) -> anyhow::Result<()> {
    let mut d = String::from("| service | image | size |\n|---|---|---:|\n");
    for (service, image) in ctx.b.images.clone() {
        let out = tokio::process::Command::new("docker")
            .args(["image", "inspect", "--format", "{{.Size}}", &image])
            .output()
            .await;
        let size = out
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok());
        match size {
            Some(bytes) => {
                let mb = bytes / 1e6;
                let _ = writeln!(d, "| {service} | `{image}` | {} MB |", num(mb));
                ctx.report.figures.push(Figure::new(
                    "7",
                    format!("{service} image size (`{image}`)"),
                    "MB",
                    vec![mb],
                    None,
                ));
            }
            None => {
                let _ = writeln!(d, "| {service} | `{image}` | not present (build with `make images`) |");
            }
        }
    }
    ctx.report.details.push(("7. Images".into(), d));
    Ok(())
}

/// Start-to-ready times.
pub async fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let b = ctx.b.clone();
    let topic = b.name("startup");
    ctx.topics.push(topic.clone());
    setup::ensure_topic(&b, &topic).await?;
    let targets = setup::write_targets(&b, "startup-targets.json", 1, "30s", &ctx.nginx.url())?;
    let (mut checker, mut sink_restart, mut sink_first) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..b.repeats {
        let t = Instant::now();
        let mut s = Service::start(
            &b,
            "checker",
            &format!("checker-start-{r}"),
            &[
                ("TARGETS_FILE", targets.display().to_string()),
                ("KAFKA_TOPIC", topic.clone()),
            ],
            false,
        )
        .await?;
        s.wait_ready(Duration::from_secs(30))
            .await
            .context("checker readiness")?;
        checker.push(t.elapsed().as_secs_f64() * 1e3);
        s.stop(Duration::from_secs(10)).await;

        for (first, out) in [(false, &mut sink_restart), (true, &mut sink_first)] {
            let db = b.name(&format!("start{r}{}", u8::from(first)));
            ctx.pg.create_db(&db, (!first).then_some(ctx.template.as_str())).await?;
            let t = Instant::now();
            let mut s = Service::start(
                &b,
                "sink",
                &format!("sink-start-{r}-{}", u8::from(first)),
                &[
                    ("DATABASE_URL", ctx.pg.url(&db)),
                    ("KAFKA_TOPIC", topic.clone()),
                    ("KAFKA_GROUP_ID", db.clone()),
                ],
                false,
            )
            .await?;
            s.wait_ready(Duration::from_secs(30)).await.context("sink readiness")?;
            out.push(t.elapsed().as_secs_f64() * 1e3);
            s.stop(Duration::from_secs(10)).await;
            ctx.pg.drop_db(&db).await?;
        }
    }
    let figs = &mut ctx.report.figures;
    figs.push(Figure::new("7", "checker start → ready", "ms", checker, None));
    figs.push(Figure::new(
        "7",
        "sink start → ready (schema present)",
        "ms",
        sink_restart,
        None,
    ));
    figs.push(Figure::new(
        "7",
        "sink start → ready (empty database)",
        "ms",
        sink_first,
        None,
    ));
    Ok(())
}
