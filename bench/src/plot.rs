//! `loadgen plot`: the soak's samples (`bench/soak`) as an SVG chart: the
//! resident memory and the open descriptors of both hosts over time, with
//! what happened to them marked (clients arriving and leaving, hot swaps,
//! the Redis failover).

use anyhow::{Context, Result, bail};
use std::fmt::Write;
use std::path::Path;

/// One sample: seconds since the start, each host's RSS (KiB) and open
/// descriptors, and what happened just before it, if anything.
struct Sample {
    seconds: f64,
    rss_kib: [f64; 2],
    fds: [f64; 2],
    event: String,
}

const WIDTH: f64 = 900.0;
const PANEL_HEIGHT: f64 = 220.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 56.0;
const GAP: f64 = 60.0;
const COLORS: [&str; 2] = ["#1f77b4", "#d62728"];

/// What a panel draws of a sample for host 0 or 1.
type Measure = fn(&Sample, usize) -> f64;

/// Read the samples at `input` (CSV: `seconds,rss_a_kib,fds_a,rss_b_kib,fds_b,event`)
/// and write the chart to `output`.
pub fn run(input: &Path, output: &Path, title: &str) -> Result<()> {
    let text = std::fs::read_to_string(input).with_context(|| format!("reading {input:?}"))?;
    let samples = parse(&text)?;
    std::fs::write(output, svg(&samples, title)).with_context(|| format!("writing {output:?}"))
}

fn parse(text: &str) -> Result<Vec<Sample>> {
    let mut samples = Vec::new();
    for (number, line) in text.lines().enumerate().skip(1) {
        let fields: Vec<&str> = line.splitn(6, ',').collect();
        let [seconds, rss_a, fds_a, rss_b, fds_b, event] = fields[..] else {
            bail!("line {}: expected 6 fields: {line}", number + 1);
        };
        let number = |field: &str| -> Result<f64> {
            field
                .parse()
                .with_context(|| format!("line {}: '{field}' is not a number", number + 1))
        };
        samples.push(Sample {
            seconds: number(seconds)?,
            rss_kib: [number(rss_a)?, number(rss_b)?],
            fds: [number(fds_a)?, number(fds_b)?],
            event: event.trim().to_owned(),
        });
    }
    if samples.len() < 2 {
        bail!("fewer than two samples");
    }
    Ok(samples)
}

fn svg(samples: &[Sample], title: &str) -> String {
    let height = TOP + 2.0 * PANEL_HEIGHT + GAP + 50.0;
    let minutes = samples
        .last()
        .map_or(1.0, |last| last.seconds / 60.0)
        .max(1.0);
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="22" font-size="15">{}</text>
"#,
        escape(title)
    );
    let panels: [(&str, Measure); 2] = [
        ("resident memory (MiB)", |sample, host| {
            sample.rss_kib[host] / 1024.0
        }),
        ("open descriptors", |sample, host| sample.fds[host]),
    ];
    for (index, (label, value)) in panels.iter().enumerate() {
        let top = TOP + index as f64 * (PANEL_HEIGHT + GAP);
        panel(&mut out, samples, minutes, top, label, *value);
    }
    let axis_y = TOP + 2.0 * PANEL_HEIGHT + GAP + 30.0;
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{axis_y}" text-anchor="middle">minutes</text>"#,
        LEFT + (WIDTH - LEFT - RIGHT) / 2.0
    );
    for (host, color) in COLORS.iter().enumerate() {
        let x = WIDTH - RIGHT - 180.0 + host as f64 * 90.0;
        let _ = writeln!(
            out,
            r#"<rect x="{x}" y="12" width="14" height="4" fill="{color}"/><text x="{}" y="18">host {}</text>"#,
            x + 18.0,
            ["A", "B"][host]
        );
    }
    out.push_str("</svg>\n");
    out
}

/// One panel: both hosts' `value` over time, with the events marked.
fn panel(
    out: &mut String,
    samples: &[Sample],
    minutes: f64,
    top: f64,
    label: &str,
    value: Measure,
) {
    let highest = samples
        .iter()
        .flat_map(|sample| [value(sample, 0), value(sample, 1)])
        .fold(1.0_f64, f64::max)
        * 1.1;
    let plot_width = WIDTH - LEFT - RIGHT;
    let x = |seconds: f64| LEFT + seconds / 60.0 / minutes * plot_width;
    let y = |v: f64| top + PANEL_HEIGHT - v / highest * PANEL_HEIGHT;
    let bottom = top + PANEL_HEIGHT;
    let _ = writeln!(
        out,
        r##"<text x="{LEFT}" y="{}" font-weight="bold">{label}</text>
<rect x="{LEFT}" y="{top}" width="{plot_width}" height="{PANEL_HEIGHT}" fill="none" stroke="#999"/>"##,
        top - 8.0
    );
    for tick in 0..=4 {
        let v = highest * f64::from(tick) / 4.0;
        let (label_x, label_y, grid_y, right) = (LEFT - 6.0, y(v) + 4.0, y(v), LEFT + plot_width);
        let _ = writeln!(
            out,
            r##"<text x="{label_x}" y="{label_y:.1}" text-anchor="end">{v:.0}</text><line x1="{LEFT}" x2="{right}" y1="{grid_y:.1}" y2="{grid_y:.1}" stroke="#eee"/>"##,
        );
    }
    let step = (minutes / 10.0).ceil().max(1.0);
    let mut minute = 0.0;
    while minute <= minutes {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{minute:.0}</text>"#,
            x(minute * 60.0),
            bottom + 16.0
        );
        minute += step;
    }
    for sample in samples.iter().filter(|sample| !sample.event.is_empty()) {
        let at = x(sample.seconds);
        let _ = writeln!(
            out,
            r##"<line x1="{at:.1}" x2="{at:.1}" y1="{top}" y2="{bottom}" stroke="#888" stroke-dasharray="4 3"/><text x="{at:.1}" y="{}" font-size="10" fill="#555" text-anchor="end" transform="rotate(-90 {at:.1} {0})">{}</text>"##,
            top + 4.0,
            escape(&sample.event)
        );
    }
    for (host, color) in COLORS.iter().enumerate() {
        let points: Vec<String> = samples
            .iter()
            .map(|sample| format!("{:.1},{:.1}", x(sample.seconds), y(value(sample, host))))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
            points.join(" ")
        );
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_become_a_chart_with_both_hosts_and_the_events() {
        let samples = parse(
            "seconds,rss_a_kib,fds_a,rss_b_kib,fds_b,event\n\
             0,10240,20,11264,21,\n\
             60,20480,220,21504,221,clients start\n\
             120,10240,20,11264,21,hot swap <2>\n",
        )
        .unwrap();
        let chart = svg(&samples, "soak");
        assert_eq!(chart.matches("<polyline").count(), 4, "2 panels x 2 hosts");
        assert!(chart.contains(">clients start<"));
        assert!(chart.contains("hot swap &lt;2&gt;"));
        assert!(parse("header\n1,2,3\n").is_err());
    }
}
