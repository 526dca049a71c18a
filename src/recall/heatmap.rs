//! A hand-written SVG heat map of recall accuracy: one row per prompt length, one column per
//! depth, each square coloured from red (0 %) through yellow to green (100 %) and labelled.
use super::Cell;
use std::fmt::Write as _;

/// Colour for an accuracy in [0, 1] (red → yellow → green).
fn colour(acc: f64) -> String {
    let a = if acc.is_finite() {
        acc.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (r, g) = if a < 0.5 {
        (220.0, 60.0 + 320.0 * a)
    } else {
        (220.0 - 340.0 * (a - 0.5), 220.0)
    };
    format!("rgb({},{},80)", r.round() as u8, g.round() as u8)
}

/// Renders `cells` (any order; duplicates keep the last) as an SVG document with a title.
pub fn render_svg(cells: &[Cell], title: &str) -> String {
    let mut lengths: Vec<usize> = cells.iter().map(|c| c.length).collect();
    lengths.sort_unstable();
    lengths.dedup();
    let mut depths: Vec<f64> = cells.iter().map(|c| c.depth).collect();
    depths.sort_by(f64::total_cmp);
    depths.dedup();
    let (cw, ch, left, top) = (72usize, 40usize, 90usize, 60usize);
    let width = left + cw * depths.len().max(1) + 20;
    let height = top + ch * lengths.len().max(1) + 50;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="14">{}</text>"#,
        width / 2,
        escape(title)
    );
    for (j, d) in depths.iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{d}</text>"#,
            left + j * cw + cw / 2,
            top - 8
        );
    }
    for (i, l) in lengths.iter().enumerate() {
        let y = top + i * ch;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{l}</text>"#,
            left - 8,
            y + ch / 2 + 4
        );
        for (j, d) in depths.iter().enumerate() {
            let x = left + j * cw;
            let Some(c) = cells
                .iter()
                .rev()
                .find(|c| c.length == *l && c.depth.total_cmp(d).is_eq())
            else {
                continue;
            };
            let _ = writeln!(
                s,
                r#"<rect x="{x}" y="{y}" width="{cw}" height="{ch}" fill="{}" stroke="white"><title>length {l}, depth {d}: {:.1}% of {}</title></rect>"#,
                colour(c.accuracy),
                100.0 * c.accuracy,
                c.samples
            );
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle">{:.0}%</text>"#,
                x + cw / 2,
                y + ch / 2 + 4,
                100.0 * c.accuracy
            );
        }
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">depth of the key (0 = first pair, 1 = last)</text>"#,
        left + cw * depths.len().max(1) / 2,
        height - 16
    );
    let _ = writeln!(
        s,
        r#"<text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">prompt tokens</text>"#,
        top + ch * lengths.len().max(1) / 2,
        top + ch * lengths.len().max(1) / 2
    );
    s.push_str("</svg>\n");
    s
}

/// XML-escapes text content.
fn escape(t: &str) -> String {
    let mut o = String::with_capacity(t.len());
    for c in t.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            c => o.push(c),
        }
    }
    o
}
