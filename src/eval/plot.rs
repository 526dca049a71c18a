//! A hand-written SVG of a sweep: file size (GiB, linear) against mean KLD (log scale), one
//! labelled point per level, the Pareto front joined by a line, the recommended level ringed.
//! Plain SVG 1.1 with no scripts or external references, so it renders anywhere and parses as
//! XML; no plotting dependency is needed for one scatter plot.
use super::sweep::SweepReport;
use std::fmt::Write;

const W: f64 = 720.0;
const H: f64 = 480.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

/// Escapes text for XML character data and attribute values.
pub fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            // Control characters other than tab/newline are not allowed in XML 1.0.
            c if (c as u32) < 0x20 && c != '\t' && c != '\n' => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

/// Renders the sweep as an SVG document. Levels with a non-positive or non-finite KLD are drawn
/// at the bottom of the axis (a log scale has no place for them).
pub fn sweep_svg(r: &SweepReport, title: &str) -> String {
    // A weights × cache sweep plots weights + K/V cache at the context, labelled LEVEL+CACHE.
    let caches = r.rows.iter().any(|x| {
        (x.cache_type_k, x.cache_type_v) != (r.rows[0].cache_type_k, r.rows[0].cache_type_v)
    });
    let pts: Vec<(f64, f64, String, bool)> = r
        .rows
        .iter()
        .map(|row| {
            if caches {
                (
                    row.memory_bytes() as f64 / (1u64 << 30) as f64,
                    row.report.kld.value,
                    format!("{}+{}", row.file_type.name(), row.cache_name()),
                    row.pareto,
                )
            } else {
                (
                    row.gib(),
                    row.report.kld.value,
                    row.file_type.name().to_string(),
                    row.pareto,
                )
            }
        })
        .collect();
    let pos_kld: Vec<f64> = pts
        .iter()
        .map(|p| p.1)
        .filter(|k| k.is_finite() && *k > 0.0)
        .collect();
    let (kmin, kmax) = pos_kld
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &k| {
            (a.min(k), b.max(k))
        });
    let (dmin, dmax) = if kmin.is_finite() {
        (
            kmin.log10().floor(),
            kmax.log10().ceil().max(kmin.log10().floor() + 1.0),
        )
    } else {
        (-4.0, 0.0)
    };
    let (smin, smax) = pts
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.0), b.max(p.0))
        });
    let (smin, smax) = if smin.is_finite() && smax > smin {
        let pad = (smax - smin) * 0.08;
        ((smin - pad).max(0.0), smax + pad)
    } else if smin.is_finite() {
        ((smin * 0.9).max(0.0), smin * 1.1 + 1e-9)
    } else {
        (0.0, 1.0)
    };
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let x = |s: f64| LEFT + (s - smin) / (smax - smin) * pw;
    let y = |k: f64| {
        let l = if k.is_finite() && k > 0.0 {
            k.log10()
        } else {
            dmin
        };
        TOP + ph - (l - dmin) / (dmax - dmin) * ph
    };

    let mut o = String::new();
    let _ = writeln!(o, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        o,
        r#"<rect x="0" y="0" width="{W}" height="{H}" fill="white"/>"#
    );
    let _ = writeln!(
        o,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        W / 2.0,
        xml_escape(title)
    );
    // Axes and grid.
    let _ = writeln!(
        o,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
    );
    let mut d = dmin;
    while d <= dmax + 1e-9 {
        let yy = y(10f64.powf(d));
        let _ = writeln!(
            o,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/>"##,
            LEFT + pw
        );
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">1e{}</text>"#,
            LEFT - 6.0,
            yy + 4.0,
            d as i64
        );
        d += 1.0;
    }
    for i in 0..=5 {
        let s = smin + (smax - smin) * i as f64 / 5.0;
        let xx = x(s);
        let _ = writeln!(
            o,
            r##"<line x1="{xx:.1}" y1="{:.1}" x2="{xx:.1}" y2="{:.1}" stroke="#333"/>"##,
            TOP + ph,
            TOP + ph + 5.0
        );
        let _ = writeln!(
            o,
            r#"<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            TOP + ph + 19.0,
            fmt_gib(s)
        );
    }
    let _ = writeln!(
        o,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + pw / 2.0,
        H - 14.0,
        if caches {
            "weights + K/V cache at the context (GiB)"
        } else {
            "file size (GiB)"
        }
    );
    let _ = writeln!(
        o,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">mean KL divergence vs reference (log scale)</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0
    );
    // Pareto front.
    let mut front: Vec<&(f64, f64, String, bool)> = pts.iter().filter(|p| p.3).collect();
    front.sort_by(|a, b| a.0.total_cmp(&b.0));
    if front.len() > 1 {
        let line: Vec<String> = front
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.0), y(p.1)))
            .collect();
        let _ = writeln!(
            o,
            r##"<polyline points="{}" fill="none" stroke="#1f77b4" stroke-width="1.5" stroke-dasharray="5,3"/>"##,
            line.join(" ")
        );
    }
    // Points.
    for (i, p) in pts.iter().enumerate() {
        let (xx, yy) = (x(p.0), y(p.1));
        let color = if p.3 { "#1f77b4" } else { "#999" };
        if r.recommended == Some(i) {
            let _ = writeln!(
                o,
                r##"<circle cx="{xx:.1}" cy="{yy:.1}" r="9" fill="none" stroke="#d62728" stroke-width="2"/>"##
            );
        }
        let _ = writeln!(
            o,
            r#"<circle cx="{xx:.1}" cy="{yy:.1}" r="4" fill="{color}"><title>{}: {:.4} GiB, KLD {:.6}</title></circle>"#,
            xml_escape(&p.2),
            p.0,
            p.1
        );
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            xx + 7.0,
            yy - 6.0,
            xml_escape(&p.2)
        );
    }
    let _ = writeln!(
        o,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#1f77b4">dashed: Pareto front{}</text>"##,
        LEFT + pw - 6.0,
        TOP + 16.0,
        if r.recommended.is_some() {
            "; ringed: recommended"
        } else {
            ""
        }
    );
    o.push_str("</svg>\n");
    o
}

fn fmt_gib(s: f64) -> String {
    if s >= 10.0 {
        format!("{s:.1}")
    } else if s >= 0.1 {
        format!("{s:.2}")
    } else {
        format!("{s:.4}")
    }
}
