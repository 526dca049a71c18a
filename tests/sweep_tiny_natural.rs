//! A sweep of the natural-weight fixture `fixtures/tiny-natural` (HF folder, BF16): the F32
//! reference and Q8_0, Q6_K, Q5_K_M, Q4_K_M made by the converter, each compared with the
//! reference on real English text (ctx 256, 4 chunks).
//!
//! Asserts: sizes fall monotonically Q8_0 > Q6_K > Q5_K_M > Q4_K_M and mean KLD rises strictly
//! the other way (llama.cpp's own figures on other text, ctx 512, 20 chunks, in the fixture's
//! PROVENANCE.md: 0.00016, 0.00098, 0.00172, 0.00443); all four sit on the Pareto front; the
//! recommendation follows the bound; the SVG is well-formed XML with one labelled point per level;
//! the JSON document carries the same numbers as the printed table; the temporary folder is gone.
//!
//! Needs `fixtures/fetch.sh` (for the text); without it the test skips with a note, or fails when
//! CI=true.
mod common;
use common::require as need;
use longquant::convert::mix::FileType;
use longquant::eval::plot::sweep_svg;
use longquant::eval::sweep::{default_compare, recommend, sweep, Bound, SweepOptions};
use std::path::Path;

/// A small XML well-formedness check: one root element, every tag closed in order, attribute
/// values quoted, no raw `<` or stray `&` in text or attributes, only the five predefined entities
/// or numeric references. Enough to catch what a hand-written SVG writer can get wrong.
fn check_xml(doc: &str) -> Result<usize, String> {
    let b = doc.as_bytes();
    let mut i = 0;
    let mut stack: Vec<String> = Vec::new();
    let mut roots = 0;
    let mut elements = 0;
    let check_text = |t: &str| -> Result<(), String> {
        let mut rest = t;
        while let Some(p) = rest.find('&') {
            let after = &rest[p + 1..];
            let end = after.find(';').ok_or("unterminated entity")?;
            let name = &after[..end];
            let ok = matches!(name, "amp" | "lt" | "gt" | "quot" | "apos")
                || (name.starts_with('#') && name.len() > 1);
            if !ok {
                return Err(format!("bad entity &{name};"));
            }
            rest = &after[end + 1..];
        }
        Ok(())
    };
    while i < b.len() {
        if b[i] != b'<' {
            let next = doc[i..].find('<').map_or(b.len(), |p| i + p);
            let text = &doc[i..next];
            if stack.is_empty() && !text.trim().is_empty() {
                return Err("text outside the root".into());
            }
            check_text(text)?;
            i = next;
            continue;
        }
        let close = doc[i..].find('>').ok_or("unterminated tag")? + i;
        let tag = &doc[i + 1..close];
        if tag.contains('<') {
            return Err(format!("'<' inside tag {tag}"));
        }
        if tag.starts_with('?') {
            if !tag.ends_with('?') {
                return Err("bad processing instruction".into());
            }
        } else if let Some(name) = tag.strip_prefix('/') {
            let open = stack.pop().ok_or("close without open")?;
            if open != name.trim() {
                return Err(format!("</{name}> closes <{open}>"));
            }
        } else {
            let self_closing = tag.ends_with('/');
            let body = tag.trim_end_matches('/');
            let name_end = body.find(char::is_whitespace).unwrap_or(body.len());
            let name = &body[..name_end];
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == ':' || c == '-')
            {
                return Err(format!("bad element name {name:?}"));
            }
            // Attributes: name="value" pairs.
            let mut rest = body[name_end..].trim();
            while !rest.is_empty() {
                let eq = rest
                    .find('=')
                    .ok_or(format!("attribute without value in <{name}>"))?;
                let q = rest[eq + 1..].chars().next().ok_or("missing quote")?;
                if q != '"' && q != '\'' {
                    return Err(format!("unquoted attribute in <{name}>"));
                }
                let vstart = eq + 2;
                let vend = rest[vstart..].find(q).ok_or("unterminated attribute")? + vstart;
                check_text(&rest[vstart..vend])?;
                rest = rest[vend + 1..].trim_start();
            }
            if stack.is_empty() {
                roots += 1;
            }
            elements += 1;
            if !self_closing {
                stack.push(name.to_string());
            }
        }
        i = close + 1;
    }
    if !stack.is_empty() {
        return Err(format!("unclosed {stack:?}"));
    }
    if roots != 1 {
        return Err(format!("{roots} root elements"));
    }
    Ok(elements)
}

#[test]
fn xml_checker_rejects_broken_documents() {
    assert!(check_xml("<a><b x=\"1\"/>t &amp; u</a>").is_ok());
    assert!(check_xml("<a><b></a></b>").is_err());
    assert!(check_xml("<a x=1></a>").is_err());
    assert!(check_xml("<a>1 & 2</a>").is_err());
    assert!(check_xml("<a></a><b></b>").is_err());
    assert!(check_xml("<a>").is_err());
}

#[test]
fn sweep_tiny_natural_orders_levels() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (Some(src), Some(text)) = (
        need(root.join("fixtures/tiny-natural")),
        need(root.join("fixtures/cache/text/licenses.txt")),
    ) else {
        return;
    };
    let text = std::fs::read_to_string(text).unwrap();
    let work = tempfile::tempdir().unwrap();
    let types = vec![
        FileType::Q8_0,
        FileType::Q6_K,
        FileType::Q5_K_M,
        FileType::Q4_K_M,
    ];
    let opts = SweepOptions {
        types: types.clone(),
        compare: default_compare(256, Some(4)),
        threads: None,
        imatrix: None,
        bound: Some(Bound::MaxKld(0.003)),
        top_k: 32,
        work_dir: Some(work.path().to_path_buf()),
        device: Default::default(),
        caches: Vec::new(),
    };
    let r = sweep(&src, &text, &opts, &mut |m| eprintln!("{m}")).unwrap();
    let table = r.table();
    eprintln!("{table}");

    // Levels, sizes and KLD ordering.
    assert_eq!(
        r.rows.iter().map(|x| x.file_type).collect::<Vec<_>>(),
        types
    );
    assert_eq!(r.reference_type, "F32");
    for w in r.rows.windows(2) {
        assert!(
            w[0].size_bytes > w[1].size_bytes,
            "sizes not monotone: {table}"
        );
        assert!(w[0].bits_per_weight > w[1].bits_per_weight);
        assert!(
            w[0].report.kld.value < w[1].report.kld.value,
            "KLD not monotone: {table}"
        );
    }
    for row in &r.rows {
        assert!(row.size_bytes < r.reference_bytes);
        assert!(row.report.kld.value > 0.0 && row.report.kld_percentiles.min > -1e-6);
        assert!(row.report.same_top_p.value > 80.0 && row.report.same_top_p.value < 100.0);
        assert!(row.pareto, "{} off the front", row.file_type.name());
        assert_eq!(row.report.n_tokens_scored, 4 * (256 - 1 - 128));
        assert!((row.report.ppl_base.value - r.reference_ppl).abs() < 1e-9 * r.reference_ppl);
    }
    // Recommendation: the smallest level with KLD ≤ the bound.
    let want = r
        .rows
        .iter()
        .enumerate()
        .filter(|(_, x)| x.report.kld.value <= 0.003)
        .min_by_key(|(_, x)| x.size_bytes)
        .map(|(i, _)| i);
    assert_eq!(r.recommended, want);
    assert!(want.is_some());
    // A size bound picks the lowest KLD that fits.
    let q6 = r.rows[1].size_bytes;
    assert_eq!(recommend(&r.rows, Some(Bound::MaxSize(q6))), Some(1));
    assert_eq!(recommend(&r.rows, Some(Bound::MaxSize(1))), None);
    // The temporary folder is gone; only the test's own work dir remains, empty.
    assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0);

    // SVG: well-formed XML with a labelled point per level.
    let svg = sweep_svg(&r, "tiny-natural <sweep> & test");
    let n = check_xml(&svg).unwrap_or_else(|e| panic!("SVG is not well-formed: {e}"));
    assert!(n > 10);
    assert!(svg.contains("&lt;sweep&gt; &amp; test"));
    for t in &types {
        assert!(
            svg.contains(&format!(">{}</text>", t.name())),
            "no label for {}",
            t.name()
        );
    }
    assert!(svg.contains("<polyline"), "no Pareto line");

    // JSON matches the table, row by row, at the table's printed precision.
    let doc = r.to_json();
    let rows = doc["rows"].as_array().unwrap();
    let lines: Vec<&str> = table
        .lines()
        .filter(|l| {
            types
                .iter()
                .any(|t| l.starts_with(&format!("{} ", t.name())))
        })
        .collect();
    assert_eq!(lines.len(), rows.len());
    for (line, row) in lines.iter().zip(rows) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[0], row["type"].as_str().unwrap());
        let num = |i: usize| cols[i].trim_end_matches('%').parse::<f64>().unwrap();
        let close = |a: f64, b: f64, tol: f64| (a - b).abs() <= tol;
        assert!(close(num(1), row["gib"].as_f64().unwrap(), 5e-5));
        assert!(close(
            num(2),
            row["bits_per_weight"].as_f64().unwrap(),
            5e-3
        ));
        assert!(close(num(3), row["ppl"].as_f64().unwrap(), 5e-5));
        assert!(close(num(4), row["delta_ppl"].as_f64().unwrap(), 5e-5));
        assert!(close(num(5), row["kld_mean"].as_f64().unwrap(), 5e-7));
        assert!(close(num(6), row["kld_p99"].as_f64().unwrap(), 5e-7));
        assert!(close(num(7), row["same_top_p"].as_f64().unwrap(), 5e-3));
        assert!(close(num(8), row["long_kld"].as_f64().unwrap(), 5e-7));
        assert_eq!(cols.get(10) == Some(&"*"), row["pareto"].as_bool().unwrap());
        assert_eq!(row["compare"]["kld_mean"], row["kld_mean"]);
    }
    assert_eq!(
        doc["recommended"].as_str(),
        r.recommended.map(|i| r.rows[i].file_type.name())
    );
}

/// Issue 17 item 2: weights × cache type. Two levels (Q8_0, Q4_K_M) × two cache types (q8_0,
/// q4_0) against the F32 reference with its F16 cache, ctx 256 × 4: four rows, each level with
/// both caches; the q4_0 cache costs more KLD than the q8_0 one for each level (measured on the
/// AVX-512 session host: Q8_0 weights 0.000748 with a q8_0 cache against 0.008247 with q4_0,
/// Q4_K_M 0.006095 against 0.014698 — margins of 11× and 2.4×, where the two arithmetic classes
/// move a KLD by well under 1 %); the table has a cache column, the JSON records the cache types and memory,
/// `--max-memory` picks the lowest KLD that fits weights + cache, and the SVG labels LEVEL+CACHE.
#[test]
fn sweep_weights_by_cache_type() {
    use longquant::model::KvType;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (Some(src), Some(text)) = (
        need(root.join("fixtures/tiny-natural")),
        need(root.join("fixtures/cache/text/licenses.txt")),
    ) else {
        return;
    };
    let text = std::fs::read_to_string(text).unwrap();
    let work = tempfile::tempdir().unwrap();
    let caches = vec![(KvType::Q8_0, KvType::Q8_0), (KvType::Q4_0, KvType::Q4_0)];
    let opts = SweepOptions {
        types: vec![FileType::Q8_0, FileType::Q4_K_M],
        compare: default_compare(256, Some(4)),
        threads: None,
        imatrix: None,
        bound: None,
        top_k: 32,
        work_dir: Some(work.path().to_path_buf()),
        device: Default::default(),
        caches: caches.clone(),
    };
    let r = sweep(&src, &text, &opts, &mut |m| eprintln!("{m}")).unwrap();
    let table = r.table();
    eprintln!("{table}");
    assert_eq!(r.rows.len(), 4);
    let got: Vec<_> = r
        .rows
        .iter()
        .map(|x| (x.file_type, x.cache_type_k, x.cache_type_v))
        .collect();
    assert_eq!(
        got,
        vec![
            (FileType::Q8_0, KvType::Q8_0, KvType::Q8_0),
            (FileType::Q8_0, KvType::Q4_0, KvType::Q4_0),
            (FileType::Q4_K_M, KvType::Q8_0, KvType::Q8_0),
            (FileType::Q4_K_M, KvType::Q4_0, KvType::Q4_0),
        ]
    );
    for pair in r.rows.chunks(2) {
        assert!(
            pair[0].report.kld.value < pair[1].report.kld.value,
            "q4_0 cache not worse than q8_0: {table}"
        );
        assert!(pair[0].cache_bytes > pair[1].cache_bytes);
        assert_eq!(pair[0].size_bytes, pair[1].size_bytes);
    }
    // 16 layers × 256 positions × n_embd_kv × (K + V) at 34/32 and 18/32 bytes per value.
    let c8 = r.rows[0].cache_bytes as f64;
    let c4 = r.rows[1].cache_bytes as f64;
    assert!((c8 / c4 - 34.0 / 18.0).abs() < 1e-6, "{c8} {c4}");
    assert!(
        table.lines().nth(1).unwrap().starts_with("cache"),
        "{table}"
    );
    assert!(table.contains("q4_0       Q4_K_M"), "{table}");
    // --max-memory: the lowest KLD whose weights + cache fit.
    let m = r.rows[3].memory_bytes();
    let pick = recommend(&r.rows, Some(Bound::MaxMemory(m))).unwrap();
    assert!(r.rows[pick].memory_bytes() <= m);
    for (i, x) in r.rows.iter().enumerate() {
        if x.memory_bytes() <= m {
            assert!(
                r.rows[pick].report.kld.value <= x.report.kld.value,
                "row {i}"
            );
        }
    }
    let doc = r.to_json();
    let rows = doc["rows"].as_array().unwrap();
    assert_eq!(rows[1]["cache_type_k"], "q4_0");
    assert_eq!(rows[1]["cache_type_v"], "q4_0");
    assert_eq!(
        rows[1]["memory_bytes"].as_u64().unwrap(),
        r.rows[1].size_bytes + r.rows[1].cache_bytes
    );
    let svg = sweep_svg(&r, "weights x cache");
    check_xml(&svg).unwrap_or_else(|e| panic!("SVG is not well-formed: {e}"));
    assert!(svg.contains(">Q4_K_M+q4_0</text>"), "no LEVEL+CACHE label");
    assert!(svg.contains("weights + K/V cache"));
}
