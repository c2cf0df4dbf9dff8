//! The status pages: maud templates (every interpolated value is HTML-escaped: target names,
//! URLs and error texts are user data), inline CSS, inline SVG charts with hover titles, no
//! script. A page reloads itself with `<meta http-equiv="refresh">`.
//!
//! The DOM carries the raw numbers next to their rendering (`data-ratio`, `data-seconds`,
//! `data-state`, ...), so that a browser test compares the page with the JSON API exactly.
//! Numbers are shown as: ratios `99.95 %` (two decimals), latencies `12.3 ms` (one
//! decimal), times `2026-12-01 18:30:00 UTC`; a missing value is `–`.

use chrono::{DateTime, SecondsFormat, Utc};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::store::status::{
    Bucket, BucketWidth, Incident, LatencyPoint, Overview, PageRequest, SlotVerdict, State, TargetDetail,
    TargetSummary, Uptime, BUCKETS,
};

/// What a page is rendered with, from its query parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageOptions {
    /// The width of the bars (`?bucket=`).
    pub bucket: BucketWidth,
    /// Seconds between reloads (`?refresh=`); 0 never reloads.
    pub refresh: u32,
}

impl Default for PageOptions {
    fn default() -> Self {
        Self {
            bucket: BucketWidth::default(),
            refresh: super::DEFAULT_REFRESH_SECONDS,
        }
    }
}

/// Characters left as they are in a path segment (RFC 3986 "unreserved"); the rest is
/// percent-encoded, `/` included.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The path of `name`'s page, percent-encoded: `/targets/a%20b%2Fc`.
pub fn target_path(name: &str) -> String {
    format!("/targets/{}", utf8_percent_encode(name, SEGMENT))
}

/// A ratio as a percentage with two decimals (`99.95 %`), or `–`.
pub fn ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "–".to_string(), |r| format!("{:.2} %", r * 100.0))
}

/// Seconds as milliseconds with one decimal (`12.3 ms`), or `–`.
pub fn millis(s: Option<f64>) -> String {
    s.map_or_else(|| "–".to_string(), |s| format!("{:.1} ms", s * 1000.0))
}

/// A time as `2026-12-01 18:30:00 UTC`.
pub fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A duration in seconds as `2h 5m` (`humantime`, whole seconds).
pub fn duration(seconds: f64) -> String {
    let secs = if seconds.is_finite() && seconds > 0.0 {
        seconds.round() as u64
    } else {
        0
    };
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

fn bucket_label(start: DateTime<Utc>, width: BucketWidth) -> String {
    match width {
        BucketWidth::Hour => start.format("%Y-%m-%d %H:00 UTC").to_string(),
        BucketWidth::Day => start.format("%Y-%m-%d").to_string(),
    }
}

fn width_of(seconds: i64) -> BucketWidth {
    if seconds >= BucketWidth::Day.seconds() {
        BucketWidth::Day
    } else {
        BucketWidth::Hour
    }
}

const CSS: &str = r#"
:root{--up:#1a7f37;--down:#cf222e;--unknown:#8c959f;--maintenance:#0969da;--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--bg:#fff;--panel:#f6f8fa}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg);margin:0;padding:16px 24px}
a{color:#0969da;text-decoration:none}a:hover{text-decoration:underline}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:24px 0 8px}
.meta{color:var(--muted);margin:0 0 12px}
.counts span{margin-right:12px;font-weight:600}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid var(--line);vertical-align:middle}
th{font-weight:600;color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.03em;white-space:nowrap}
td.num,th.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
.url{color:var(--muted);font-size:12px;word-break:break-all}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:12px;font-weight:600;white-space:nowrap}
.badge.up{background:var(--up)}.badge.down{background:var(--down)}.badge.unknown{background:var(--unknown)}.badge.maintenance{background:var(--maintenance)}
.since{color:var(--muted);font-size:12px;display:block}
svg .up{fill:var(--up)}svg .down{fill:var(--down)}svg .unknown{fill:var(--unknown)}svg .maintenance{fill:var(--maintenance)}
svg.bar rect:hover,svg.slots rect:hover{opacity:.6}
.tiles{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.tile{background:var(--panel);border:1px solid var(--line);border-radius:6px;padding:8px 14px;min-width:130px}
.tile .label{color:var(--muted);font-size:12px}.tile .value{font-size:20px;font-weight:600;font-variant-numeric:tabular-nums}
.tile .sub{color:var(--muted);font-size:12px}
.banner{padding:8px 12px;border-radius:6px;margin:8px 0;color:#fff}.banner.down{background:var(--down)}.down-now a{color:var(--down);font-weight:600}.banner.maintenance{background:var(--maintenance)}
.legend span{margin-right:14px;font-size:12px}.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:middle}
svg.chart{max-width:1000px;display:block}.chart text{font-size:11px;fill:var(--muted)}.chart .grid{stroke:var(--line)}.chart .p95{fill:none;stroke:#1f2328;stroke-width:1.5}.chart .p95dot{fill:#1f2328}
.err{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px;word-break:break-word}
.warn{color:#9a6700;font-weight:600}.crit{color:var(--down);font-weight:600}
.empty{color:var(--muted);font-style:italic}
nav a{margin-right:10px}
"#;

/// The colours of the latency chart's phases, in stacking order (bottom first).
const PHASES: [(&str, &str); 5] = [
    ("resolve", "#8250df"),
    ("connect", "#bf8700"),
    ("tls", "#1a7f37"),
    ("processing", "#0969da"),
    ("transfer", "#cf222e"),
];

fn layout(title: &str, refresh: u32, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if refresh > 0 {
                    meta http-equiv="refresh" content=(refresh);
                }
                title { (title) }
                style { (PreEscaped(CSS)) }
            }
            body { (body) }
        }
    }
}

fn badge(state: State) -> Markup {
    html! { span class={"badge " (state.as_ref())} { (state.as_ref()) } }
}

/// The query string of a page link keeping the options.
fn query(bucket: BucketWidth, refresh: u32) -> String {
    query_of(bucket, refresh, PageRequest::default())
}

/// The same, with an overview page (left out when it is the default).
fn query_of(bucket: BucketWidth, refresh: u32, page: PageRequest) -> String {
    let mut q = Vec::new();
    if bucket != BucketWidth::default() {
        q.push(format!("bucket={bucket}"));
    }
    if refresh != super::DEFAULT_REFRESH_SECONDS {
        q.push(format!("refresh={refresh}"));
    }
    let default = PageRequest::default();
    if page.page != default.page {
        q.push(format!("page={}", page.page));
    }
    if page.per_page != default.per_page {
        q.push(format!("per_page={}", page.per_page));
    }
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

fn bucket_switch(opts: &PageOptions, path: &str, page: PageRequest) -> Markup {
    html! {
        "bars: "
        @for w in [BucketWidth::Hour, BucketWidth::Day] {
            @if w == opts.bucket {
                strong { (w) }
            } @else {
                a href={(path) (query_of(w, opts.refresh, page))} { (w) }
            }
            " "
        }
    }
}

/// "Targets 101–200 of 1,000" with links to the first, previous, next and last pages.
fn pager(o: &Overview, opts: &PageOptions) -> Markup {
    let at = PageRequest {
        page: o.page,
        per_page: o.per_page,
    };
    let pages = at.pages(o.total_targets);
    let first = (at.offset() as u64 + 1).min(o.total_targets);
    let last = (at.offset() as u64 + o.targets.len() as u64).min(o.total_targets);
    let link = |page: u64, label: &str| {
        let to = PageRequest {
            page: page as u32,
            ..at
        };
        html! { a href={"/" (query_of(opts.bucket, opts.refresh, to))} data-page=(page) { (label) } }
    };
    html! {
        nav.pager id="pager" data-page=(o.page) data-pages=(pages) data-total=(o.total_targets) {
            "Targets " (first) "–" (last) " of " (o.total_targets) " · page " (o.page) " of " (pages)
            @if u64::from(o.page) > 1 {
                " · " (link(1, "first")) " · " (link((u64::from(o.page) - 1).min(pages), "← previous"))
            }
            @if u64::from(o.page) < pages {
                " · " (link(u64::from(o.page) + 1, "next →")) " · " (link(pages, "last"))
            }
        }
    }
}

fn refresh_note(refresh: u32) -> Markup {
    html! {
        @if refresh > 0 { "reloads every " (refresh) " s" } @else { "no reload" }
    }
}

/// The 90-bucket bar: one rect per run of consecutive buckets of the same state, with the
/// run's first bucket, length (`data-buckets`) and summed slot counts in a hover title. A
/// status page of 1,000 targets is mostly long green runs: one rect per bucket made it 17 MB
/// (15 KB per target); a run each keeps it near 1 KB per target.
fn bar(buckets: &[Bucket], width: BucketWidth) -> Markup {
    let n = buckets.len().max(BUCKETS);
    let w = n * 4;
    let runs = runs(buckets);
    html! {
        svg.bar width=(w) height="22" viewBox={"0 0 " (w) " 22"} role="img" aria-label={"last " (buckets.len()) " " (width) "s"} {
            @for r in &runs {
                @let first = &buckets[r.from];
                @let last = &buckets[r.from + r.len - 1];
                rect class=(first.state.as_ref()) data-state=(first.state.as_ref()) data-buckets=(r.len)
                    x=(r.from * 4) y="0" width=(r.len * 4 - 1) height="22" rx="1" {
                    title {
                        (bucket_label(first.start, width))
                        @if r.len > 1 { " – " (bucket_label(last.start, width)) " (" (r.len) " " (width) "s)" }
                        ": " (first.state.as_ref()) " — "
                        (r.up) " up, " (r.down) " down, " (r.unknown) " unknown, " (r.maintenance) " maintenance"
                    }
                }
            }
        }
    }
}

/// A run of consecutive buckets of one state: the first's index, how many, and their slots.
#[derive(Debug, Default, PartialEq)]
struct Run {
    from: usize,
    len: usize,
    up: i64,
    down: i64,
    unknown: i64,
    maintenance: i64,
}

fn runs(buckets: &[Bucket]) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    for (i, b) in buckets.iter().enumerate() {
        if !matches!(out.last(), Some(r) if buckets[r.from].state == b.state) {
            out.push(Run {
                from: i,
                ..Run::default()
            });
        }
        let r = out.last_mut().expect("a run was pushed");
        r.len += 1;
        r.up += b.up_slots;
        r.down += b.down_slots;
        r.unknown += b.unknown_slots;
        r.maintenance += b.maintenance_slots;
    }
    out
}

fn uptime_cell(window: &str, u: &Uptime) -> Markup {
    html! {
        td.num.uptime data-window=(window) data-ratio=[u.ratio] data-up=(u.up_slots) data-down=(u.down_slots)
            title={(u.up_slots) " up, " (u.down_slots) " down, " (u.unknown_slots) " unknown, " (u.maintenance_slots) " maintenance; coverage " (ratio(u.coverage_ratio))} {
            (ratio(u.ratio))
        }
    }
}

fn location_cell(t: &TargetSummary, location: &str) -> Markup {
    let found = t.locations.iter().find(|l| l.location == location);
    html! {
        @if let Some(l) = found {
            @let state = if l.success { State::Up } else { State::Down };
            td.location data-location=(location) data-success=(l.success)
                title={"slot " (time(l.scheduled_at)) ", " (millis(Some(l.duration_seconds)))} {
                (badge(state))
                " "
                @if let Some(kind) = &l.error_kind { span.err { (kind) } }
                @else if let Some(code) = l.status_code { (code) }
            }
        } @else {
            td.location data-location=(location) { "–" }
        }
    }
}

/// The overview page: every target in a table.
pub fn overview(o: &Overview, opts: &PageOptions) -> Markup {
    let width = width_of(o.bucket_seconds);
    let page = PageRequest {
        page: o.page,
        per_page: o.per_page,
    };
    let body = html! {
        header {
            h1 { "Status" }
            p.meta {
                "Generated at " time id="generated-at" datetime=(rfc3339(o.generated_at)) { (time(o.generated_at)) }
                " · " (bucket_switch(opts, "/", page))
                " · " (refresh_note(opts.refresh))
                " · " a href={"/api/v1/targets" (query_of(opts.bucket, super::DEFAULT_REFRESH_SECONDS, page))} { "JSON" }
                " · " a href="/api/v1/openapi.yaml" { "API" }
            }
            p.counts {
                @for s in [State::Up, State::Down, State::Unknown, State::Maintenance] {
                    span class={"count " (s.as_ref())} data-state=(s.as_ref()) data-count=(o.counts.get(s)) { (o.counts.get(s)) " " (s.as_ref()) }
                }
            }
            @if !o.down_targets.is_empty() {
                p.down-now id="down-now" {
                    "Down now: "
                    @for (i, name) in o.down_targets.iter().enumerate() {
                        @if i > 0 { ", " }
                        a href={(target_path(name)) (query(opts.bucket, opts.refresh))} data-target=(name) { (name) }
                    }
                }
            }
            @if o.total_targets > 0 { (pager(o, opts)) }
        }
        @if o.total_targets == 0 {
            p.empty id="no-targets" { "No target has a result yet." }
        } @else if o.targets.is_empty() {
            p.empty id="no-targets" { "No target on this page." }
        } @else {
            table id="targets" {
                thead { tr {
                    th { "Target" }
                    th { "State" }
                    @for l in &o.locations { th { (l) } }
                    th.num { "24 h" } th.num { "7 d" } th.num { "30 d" }
                    th.num { "p50" } th.num { "p95" }
                    th { "Last error" }
                    th { "Last " (BUCKETS) " " (width) "s" }
                } }
                tbody {
                    @for t in &o.targets {
                        tr.target data-target=(t.name) data-state=(t.state.as_ref()) {
                            td.name {
                                a href={(target_path(&t.name)) (query(opts.bucket, opts.refresh))} { (t.name) }
                                div.url { (t.url) }
                            }
                            td.state {
                                (badge(t.state))
                                @if let Some(since) = t.state_since {
                                    span.since title=(time(since)) { "since " (time(since)) }
                                }
                            }
                            @for l in &o.locations { (location_cell(t, l)) }
                            (uptime_cell("24h", &t.uptime_24h))
                            (uptime_cell("7d", &t.uptime_7d))
                            (uptime_cell("30d", &t.uptime_30d))
                            td.num.p50 data-seconds=[t.latency_p50_seconds] { (millis(t.latency_p50_seconds)) }
                            td.num.p95 data-seconds=[t.latency_p95_seconds] { (millis(t.latency_p95_seconds)) }
                            td.last-error {
                                @if let Some(kind) = &t.last_error_kind {
                                    span.err { (kind) }
                                    @if let Some(at) = t.last_error_at { span.since { (time(at)) } }
                                } @else { "–" }
                            }
                            td.bars { (bar(&t.buckets, width)) }
                        }
                    }
                }
            }
        }
    };
    layout("Status", opts.refresh, body)
}

fn tile(label: &str, value: &str, sub: Option<String>, class: &str) -> Markup {
    html! {
        div class={"tile " (class)} {
            div.label { (label) }
            div.value { (value) }
            @if let Some(s) = sub { div.sub { (s) } }
        }
    }
}

/// Nice upper bound of an axis: 1, 2 or 5 times a power of ten, at least `max`.
fn nice_ceiling(max: f64) -> f64 {
    if !max.is_finite() || max <= 0.0 {
        return 0.001;
    }
    let p = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|v| *v >= max)
        .unwrap_or(10.0 * p)
}

/// The rects of one stacked bar: (phase, colour, top y, height) of each phase with time.
fn stack(values: &[Option<f64>; 5], y: &dyn Fn(f64) -> f64) -> Vec<(&'static str, &'static str, f64, f64)> {
    let mut base = 0.0;
    let mut out = Vec::new();
    for ((name, colour), v) in PHASES.iter().zip(values) {
        let v = v.unwrap_or(0.0);
        if v > 0.0 {
            out.push((*name, *colour, y(base + v), (y(base) - y(base + v)).max(0.5)));
            base += v;
        }
    }
    out
}

/// Latency by phase over time: a stacked bar of the phases' means per bucket, the p95 as a
/// line; every bar's numbers in its hover title.
fn latency_chart(points: &[LatencyPoint], width: BucketWidth) -> Markup {
    const W: f64 = 760.0;
    const H: f64 = 220.0;
    const LEFT: f64 = 56.0;
    const BOTTOM: f64 = 22.0;
    const TOP: f64 = 8.0;
    let phases = |p: &LatencyPoint| {
        [
            p.resolve_seconds,
            p.connect_seconds,
            p.tls_seconds,
            p.processing_seconds,
            p.transfer_seconds,
        ]
    };
    let max = points
        .iter()
        .map(|p| {
            let stacked: f64 = phases(p).iter().map(|v| v.unwrap_or(0.0)).sum();
            stacked.max(p.p95_seconds.unwrap_or(0.0))
        })
        .fold(0.0, f64::max);
    let top = nice_ceiling(max);
    let plot_h = H - BOTTOM - TOP;
    let n = points.len().max(1) as f64;
    let step = (W - LEFT) / n;
    let y = |v: f64| TOP + plot_h - (v / top * plot_h);
    let mut p95_path = String::new();
    let mut pen_down = false;
    for (i, p) in points.iter().enumerate() {
        match p.p95_seconds {
            Some(v) => {
                let x = LEFT + step * (i as f64 + 0.5);
                p95_path.push_str(&format!("{}{x:.1},{:.1} ", if pen_down { "L" } else { "M" }, y(v)));
                pen_down = true;
            }
            None => pen_down = false,
        }
    }
    html! {
        svg.chart id="latency-chart" width="100%" viewBox={"0 0 " (W) " " (H)} role="img" aria-label="latency by phase" {
            @for f in [0.0, 0.5, 1.0] {
                line.grid x1=(LEFT) x2=(W) y1=(y(top * f)) y2=(y(top * f)) {}
                text x=(LEFT - 4.0) y=(y(top * f) + 4.0) text-anchor="end" { (millis(Some(top * f))) }
            }
            @for (i, p) in points.iter().enumerate() {
                @let x = LEFT + step * i as f64 + step * 0.1;
                @let bw = (step * 0.8).max(1.0);
                g.point data-start=(rfc3339(p.start)) data-probes=(p.probes) {
                    title {
                        (bucket_label(p.start, width)) ": " (p.probes) " probes"
                        @for ((name, _), v) in PHASES.iter().zip(phases(p)) { "; " (name) " " (millis(v)) }
                        "; p95 " (millis(p.p95_seconds))
                    }
                    @for (name, colour, y0, h) in stack(&phases(p), &y) {
                        rect class={"phase " (name)} x={(format!("{x:.1}"))} y={(format!("{y0:.1}"))}
                            width={(format!("{bw:.1}"))} height={(format!("{h:.1}"))} fill=(colour) {}
                    }
                    // A transparent full-height rect so that the hover title works above short bars.
                    rect x={(format!("{x:.1}"))} y=(TOP) width={(format!("{bw:.1}"))} height=(plot_h) fill="transparent" {}
                }
            }
            @if !p95_path.is_empty() {
                path.p95 d=(p95_path.trim_end()) {}
            }
            // A dot per p95, so that a lone bucket (no line to draw) still shows it.
            @for (i, p) in points.iter().enumerate() {
                @if let Some(v) = p.p95_seconds {
                    circle.p95dot cx=(format!("{:.1}", LEFT + step * (i as f64 + 0.5))) cy=(format!("{:.1}", y(v))) r="2.5" {}
                }
            }
            @if let (Some(first), Some(last)) = (points.first(), points.last()) {
                text x=(LEFT) y=(H - 6.0) { (bucket_label(first.start, width)) }
                text x=(W) y=(H - 6.0) text-anchor="end" { (bucket_label(last.start, width)) }
            }
        }
        p.legend {
            @for (name, colour) in PHASES { span { i style={"background:" (colour)} {} (name) } }
            span { i style="background:#1f2328;height:2px" {} "p95 (whole probe)" }
        }
    }
}

/// The recent slots: one rect per slot, coloured by its verdict.
fn slot_strip(slots: &[SlotVerdict]) -> Markup {
    let w = slots.len().max(BUCKETS) * 8;
    html! {
        svg.slots id="slots" width=(w) height="22" viewBox={"0 0 " (w) " 22"} role="img" aria-label="recent slots" {
            @for (i, s) in slots.iter().enumerate() {
                rect class=(s.state.as_ref()) data-state=(s.state.as_ref()) x=(i * 8) y="0" width="6" height="22" rx="1" {
                    title {
                        (time(s.scheduled_at)) ": " (s.state.as_ref())
                        @if !s.locations_failed.is_empty() { " (failed at " (s.locations_failed.join(", ")) ")" }
                    }
                }
            }
        }
    }
}

/// Days from `now` to `t`, with a class: `crit` under 7 days, `warn` under 21 (the alert
/// rules' thresholds).
fn expiry(t: DateTime<Utc>, now: DateTime<Utc>) -> Markup {
    let days = (t - now).num_seconds() as f64 / 86_400.0;
    let class = if days < 7.0 {
        "crit"
    } else if days < 21.0 {
        "warn"
    } else {
        ""
    };
    html! {
        span class=(class) data-days=(format!("{days:.2}")) {
            (time(t)) " (" @if days >= 0.0 { "in " (plural_days(days)) } @else { "expired " (plural_days(-days)) " ago" } ")"
        }
    }
}

/// `3 days`, `1 day`, `0 days` (rounded).
fn plural_days(days: f64) -> String {
    let n = days.round() as i64;
    if n == 1 {
        "1 day".to_string()
    } else {
        format!("{n} days")
    }
}

fn incidents_table(incidents: &[Incident]) -> Markup {
    html! {
        @if incidents.is_empty() {
            p.empty { "No incident." }
        } @else {
            table id="incidents" {
                thead { tr {
                    th { "Started" } th { "Ended" } th.num { "Duration" } th.num { "Down slots" }
                    th { "Locations" } th { "First error" } th { "Planned" }
                } }
                tbody {
                    @for i in incidents {
                        tr.incident data-id=(i.id) data-open=(i.ended_at.is_none()) {
                            td { (time(i.started_at)) }
                            td { @if let Some(e) = i.ended_at { (time(e)) } @else { (badge(State::Down)) " open" } }
                            td.num data-seconds=(i.duration_seconds) { (duration(i.duration_seconds)) }
                            td.num { (i.down_slots) }
                            td { (i.failing_locations.join(", ")) }
                            td.err {
                                @if let Some(k) = &i.first_error_kind { strong { (k) } }
                                @if let Some(e) = &i.first_error { " " (e) }
                            }
                            td { @if i.planned { "planned" } @else { "no" } }
                        }
                    }
                }
            }
        }
    }
}

/// Whether `url` may be a link (http or https; anything else is shown as text).
fn linkable(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// One target's page.
pub fn target(d: &TargetDetail, opts: &PageOptions) -> Markup {
    let t = &d.summary;
    let width = opts.bucket;
    let now = Utc::now();
    let path = target_path(&t.name);
    let body = html! {
        nav { a href={"/" (query(opts.bucket, opts.refresh))} { "← all targets" } }
        header {
            h1 id="target-name" data-target=(t.name) { (t.name) " " (badge(t.state)) }
            p.meta {
                @if linkable(&t.url) { a.url href=(t.url) rel="noopener noreferrer nofollow" { (t.url) } }
                @else { span.url { (t.url) } }
                @if let Some(since) = t.state_since { " · " (t.state.as_ref()) " since " (time(since)) }
                " · " (bucket_switch(opts, &path, PageRequest::default()))
                " · " (refresh_note(opts.refresh))
                " · " a href={"/api/v1/targets/" (&path["/targets/".len()..])} { "JSON" }
            }
        }
        @if let Some(i) = &t.open_incident {
            div.banner.down id="open-incident" {
                "Incident open since " (time(i.started_at)) " (" (duration(i.duration_seconds)) ", "
                (i.down_slots) " down slots)"
                @if let Some(k) = &i.first_error_kind { ": " (k) }
            }
        }
        @if t.state == State::Maintenance {
            div.banner.maintenance { "In a maintenance window: slots are not counted in uptime." }
        }
        div.tiles {
            (tile("Uptime 24 h", &ratio(t.uptime_24h.ratio), Some(format!("coverage {}", ratio(t.uptime_24h.coverage_ratio))), "uptime-24h"))
            (tile("Uptime 7 d", &ratio(t.uptime_7d.ratio), Some(format!("coverage {}", ratio(t.uptime_7d.coverage_ratio))), "uptime-7d"))
            (tile("Uptime 30 d", &ratio(t.uptime_30d.ratio), Some(format!("coverage {}", ratio(t.uptime_30d.coverage_ratio))), "uptime-30d"))
            (tile("p50 (24 h)", &millis(t.latency_p50_seconds), None, "p50"))
            (tile("p95 (24 h)", &millis(t.latency_p95_seconds), None, "p95"))
            (tile("Last error", t.last_error_kind.as_deref().unwrap_or("–"), t.last_error_at.map(time), "last-error"))
        }
        h2 { "Locations" }
        table id="locations" {
            thead { tr { th { "Location" } th { "State" } th { "Slot" } th.num { "Status" } th.num { "Duration" } th { "Error" } } }
            tbody {
                @for l in &t.locations {
                    tr.location data-location=(l.location) data-success=(l.success) {
                        td { (l.location) }
                        td { (badge(if l.success { State::Up } else { State::Down })) }
                        td { (time(l.scheduled_at)) }
                        td.num { @if let Some(c) = l.status_code { (c) } @else { "–" } }
                        td.num data-seconds=(l.duration_seconds) { (millis(Some(l.duration_seconds))) }
                        td.err { (l.error_kind.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
        h2 { "Latency by phase (per " (width) ")" }
        @if d.latency.iter().all(|p| p.probes == 0) {
            p.empty { "No probe in this range." }
        } @else {
            (latency_chart(&d.latency, width))
        }
        h2 { "Last " (d.slots.len()) " slots" }
        (slot_strip(&d.slots))
        h2 { "Last " (BUCKETS) " " (width) "s" }
        (bar(&t.buckets, width))
        h2 { "TLS" }
        @if let Some(tls) = &d.tls {
            table id="tls" {
                tbody {
                    tr { th { "Seen" } td { (time(tls.observed_at)) } }
                    tr { th { "Version" } td { (tls.version.as_deref().unwrap_or("–")) } }
                    tr { th { "Cipher" } td { (tls.cipher.as_deref().unwrap_or("–")) } }
                    tr { th { "Leaf subject" } td { (tls.leaf_subject.as_deref().unwrap_or("–")) } }
                    tr { th { "Leaf expires" } td.leaf-expiry { @if let Some(t) = tls.leaf_not_after { (expiry(t, now)) } @else { "–" } } }
                    tr { th { "Earliest expiry in chain" } td.earliest-expiry { @if let Some(t) = tls.earliest_not_after { (expiry(t, now)) } @else { "–" } } }
                }
            }
        } @else {
            p.empty { "No TLS (not an HTTPS target, or no handshake yet)." }
        }
        h2 { "Incidents" }
        (incidents_table(&d.incidents))
        h2 { "Last failures" }
        @if d.failures.is_empty() {
            p.empty { "No failure." }
        } @else {
            table id="failures" {
                thead { tr { th { "Slot" } th { "Location" } th { "Kind" } th.num { "Status" } th { "Error" } } }
                tbody {
                    @for f in &d.failures {
                        tr.failure {
                            td { (time(f.scheduled_at)) }
                            td { (f.location) }
                            td.err { (f.error_kind.as_deref().unwrap_or("–")) }
                            td.num { @if let Some(c) = f.status_code { (c) } @else { "–" } }
                            td.err.error-text { (f.error.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
        h2 { "Maintenance windows" }
        @if d.maintenance.is_empty() {
            p.empty { "None planned." }
        } @else {
            table id="maintenance" {
                thead { tr { th { "From" } th { "To" } th { "Applies to" } th { "Reason" } } }
                tbody {
                    @for m in &d.maintenance {
                        tr.window data-id=(m.id) {
                            td { (time(m.starts_at)) }
                            td { (time(m.ends_at)) }
                            td { (m.target_name.as_deref().unwrap_or("every target")) }
                            td { (m.reason) }
                        }
                    }
                }
            }
        }
    };
    layout(&format!("{} · Status", t.name), opts.refresh, body)
}

/// An error page: the status and what is wrong; it reloads after `refresh` seconds (0:
/// never), so that a page shown during a database outage comes back by itself.
pub fn error(status: http::StatusCode, message: &str, refresh: u32) -> Markup {
    let body = html! {
        nav { a href="/" { "← all targets" } }
        h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
        p id="error" { (message) }
    };
    layout(&format!("{} · Status", status.as_u16()), refresh, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::status::{LocationState, Tls};

    fn t0() -> DateTime<Utc> {
        "2026-12-01T12:00:00Z".parse().unwrap()
    }

    fn uptime(up: i64, down: i64) -> Uptime {
        Uptime {
            ratio: Some(up as f64 / (up + down) as f64),
            coverage_ratio: Some(1.0),
            up_slots: up,
            down_slots: down,
            unknown_slots: 0,
            maintenance_slots: 0,
        }
    }

    fn summary(name: &str) -> TargetSummary {
        TargetSummary {
            name: name.to_string(),
            url: "javascript:alert(1)".to_string(),
            state: State::Down,
            state_since: Some(t0()),
            locations: vec![LocationState {
                location: "eu".to_string(),
                scheduled_at: t0(),
                success: false,
                status_code: None,
                error_kind: Some("connect".to_string()),
                duration_seconds: 0.0123,
            }],
            uptime_24h: uptime(1439, 1),
            uptime_7d: uptime(99, 1),
            uptime_30d: uptime(1, 0),
            latency_p50_seconds: Some(0.0123),
            latency_p95_seconds: None,
            last_error_kind: Some("connect".to_string()),
            last_error_at: Some(t0()),
            buckets: (0..90)
                .map(|i| Bucket {
                    start: t0() + chrono::Duration::hours(i),
                    up_slots: 60,
                    down_slots: i64::from(i == 89),
                    unknown_slots: 0,
                    maintenance_slots: 0,
                    state: if i == 89 { State::Down } else { State::Up },
                })
                .collect(),
            open_incident: None,
        }
    }

    #[test]
    fn the_overview_escapes_names_and_shows_the_numbers() {
        let o = Overview {
            generated_at: t0(),
            bucket_seconds: 3600,
            locations: vec!["eu".to_string()],
            total_targets: 1,
            page: 1,
            per_page: 100,
            counts: crate::store::status::StateCounts {
                down: 1,
                ..Default::default()
            },
            down_targets: vec!["<script>x</script> & co".to_string()],
            targets: vec![summary("<script>x</script> & co")],
        };
        let page = overview(&o, &PageOptions::default()).into_string();
        assert!(!page.contains("<script>"), "names are escaped");
        assert!(page.contains("&lt;script&gt;x&lt;/script&gt; &amp; co"));
        assert!(
            page.contains(r#"href="/targets/%3Cscript%3Ex%3C%2Fscript%3E%20%26%20co""#),
            "{page}"
        );
        assert!(page.contains("99.93 %"), "1439/1440 rendered");
        assert!(page.contains("12.3 ms"));
        assert!(page.contains(r#"<meta http-equiv="refresh" content="30">"#));
        assert_eq!(page.matches("<rect ").count(), 2, "one rect per run of a state");
        assert!(page.contains(r#"data-state="up" data-buckets="89" x="0""#), "{page}");
        assert!(page.contains(
            "2026-12-01 12:00 UTC – 2026-12-05 04:00 UTC (89 hours): up — 5340 up, 0 down, 0 unknown, 0 maintenance"
        ));
        assert!(page.contains(r#"data-buckets="1" x="356" y="0" width="3""#), "{page}");
        assert!(page.contains("2026-12-05 05:00 UTC: down — 60 up, 1 down, 0 unknown, 0 maintenance"));
    }

    #[test]
    fn the_target_page_links_only_http_urls_and_charts_every_bucket() {
        let point = |i: i64| LatencyPoint {
            start: t0() + chrono::Duration::hours(i),
            probes: 60,
            resolve_seconds: Some(0.001),
            connect_seconds: Some(0.002),
            tls_seconds: None,
            processing_seconds: Some(0.010),
            transfer_seconds: Some(0.0005),
            p95_seconds: if i == 3 { None } else { Some(0.02) },
        };
        let d = TargetDetail {
            summary: summary("a/b c"),
            latency: (0..10).map(point).collect(),
            slots: vec![],
            incidents: vec![],
            tls: Some(Tls {
                observed_at: t0(),
                version: Some("TLSv1.3".to_string()),
                cipher: None,
                leaf_subject: Some("CN=<b>".to_string()),
                leaf_not_after: Some(Utc::now() + chrono::Duration::days(5)),
                earliest_not_after: None,
            }),
            failures: vec![],
            maintenance: vec![],
        };
        let page = target(
            &d,
            &PageOptions {
                bucket: BucketWidth::Hour,
                refresh: 0,
            },
        )
        .into_string();
        assert!(!page.contains("href=\"javascript:"), "only http(s) URLs are links");
        assert!(!page.contains("http-equiv"), "refresh=0 never reloads");
        assert_eq!(page.matches("<g class=\"point\"").count(), 10);
        assert_eq!(page.matches("class=\"phase resolve\"").count(), 10);
        assert!(page.contains("CN=&lt;b&gt;"));
        assert!(page.contains(r#"class="crit""#), "expiry within 7 days is critical");
        assert!(page.contains(r#"href="/api/v1/targets/a%2Fb%20c""#), "{page}");
        // The p95 line breaks where a bucket has no p95.
        let d = page
            .split(r#"class="p95" d=""#)
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(d.matches('M').count(), 2, "{d}");
        assert_eq!(d.matches('L').count(), 7, "{d}");
    }

    #[test]
    fn formats() {
        assert_eq!(ratio(Some(0.99949)), "99.95 %");
        assert_eq!(ratio(None), "–");
        assert_eq!(millis(Some(0.01234)), "12.3 ms");
        assert_eq!(duration(3723.4), "1h 2m 3s");
        assert_eq!(nice_ceiling(0.013), 0.02);
        assert_eq!(nice_ceiling(0.0), 0.001);
        assert_eq!(target_path("a b/é"), "/targets/a%20b%2F%C3%A9");
    }
}
