//! Golden vectors made by llama.cpp itself (`scripts/golden/make_golden.py`, provenance in
//! `scripts/golden/PROVENANCE.md`): the same F32 rows that llama.cpp's `llama_model_quantize`
//! turned into `tests/golden/<type>.bin` are quantized here with our scalar reference path and
//! compared block by block.
//!
//! Per type the test prints the share of byte-identical blocks and, for every differing block,
//! where it differs and its squared error against the input next to llama.cpp's. It requires
//! ≥ 99 % identical blocks, and that no differing block is worse than llama.cpp's (relative
//! tolerance 1e-6; for the imatrix sets the error is weighted by the importance column, the
//! quantity those quantizers are built to minimise).
//!
//! A second set of tests dequantizes llama.cpp's blocks with our code and checks every row, bit
//! for bit, against gguf-py's dequantization of them (stored as one FNV-1a-64 hash per row).
//!
//! The data are committed, so none of this needs Python.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use longquant_quants::simd::scalar_kernels;
use longquant_quants::tensor::{dequantize_row_with, quantize_row_with};
use longquant_quants::BlockFormat;

// ---------------------------------------------------------------------------------------------
// A minimal JSON reader for manifest.json (the quants crate has no serde_json dependency).
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn get(&self, key: &str) -> &Json {
        match self {
            Json::Obj(kv) => kv
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v)
                .unwrap_or_else(|| panic!("manifest: missing key {key:?}")),
            _ => panic!("manifest: {key:?} looked up in a non-object"),
        }
    }
    fn usize(&self) -> usize {
        match self {
            Json::Num(n) if *n >= 0.0 && n.fract() == 0.0 => *n as usize,
            other => panic!("manifest: expected a non-negative integer, got {other:?}"),
        }
    }
    fn str(&self) -> &str {
        match self {
            Json::Str(s) => s,
            other => panic!("manifest: expected a string, got {other:?}"),
        }
    }
    fn bool(&self) -> bool {
        match self {
            Json::Bool(b) => *b,
            other => panic!("manifest: expected a bool, got {other:?}"),
        }
    }
    fn arr(&self) -> &[Json] {
        match self {
            Json::Arr(a) => a,
            other => panic!("manifest: expected an array, got {other:?}"),
        }
    }
    fn obj(&self) -> &[(String, Json)] {
        match self {
            Json::Obj(kv) => kv,
            other => panic!("manifest: expected an object, got {other:?}"),
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn parse(text: &str) -> Json {
        let mut p = Parser {
            s: text.as_bytes(),
            i: 0,
        };
        let v = p.value();
        p.ws();
        assert_eq!(p.i, p.s.len(), "manifest: trailing data at byte {}", p.i);
        v
    }
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn peek(&self) -> u8 {
        *self
            .s
            .get(self.i)
            .unwrap_or_else(|| panic!("manifest: unexpected end"))
    }
    fn eat(&mut self, c: u8) {
        self.ws();
        assert_eq!(
            self.peek(),
            c,
            "manifest: expected {:?} at byte {}",
            c as char,
            self.i
        );
        self.i += 1;
    }
    fn lit(&mut self, word: &str, v: Json) -> Json {
        assert!(
            self.s[self.i..].starts_with(word.as_bytes()),
            "manifest: bad literal at {}",
            self.i
        );
        self.i += word.len();
        v
    }
    fn value(&mut self) -> Json {
        self.ws();
        match self.peek() {
            b'{' => {
                self.i += 1;
                let mut kv = Vec::new();
                self.ws();
                if self.peek() == b'}' {
                    self.i += 1;
                    return Json::Obj(kv);
                }
                loop {
                    self.ws();
                    let k = self.string();
                    self.eat(b':');
                    kv.push((k, self.value()));
                    self.ws();
                    let c = self.peek();
                    self.i += 1;
                    match c {
                        b',' => continue,
                        b'}' => return Json::Obj(kv),
                        _ => panic!("manifest: expected , or }} at byte {}", self.i - 1),
                    }
                }
            }
            b'[' => {
                self.i += 1;
                let mut a = Vec::new();
                self.ws();
                if self.peek() == b']' {
                    self.i += 1;
                    return Json::Arr(a);
                }
                loop {
                    a.push(self.value());
                    self.ws();
                    let c = self.peek();
                    self.i += 1;
                    match c {
                        b',' => continue,
                        b']' => return Json::Arr(a),
                        _ => panic!("manifest: expected , or ] at byte {}", self.i - 1),
                    }
                }
            }
            b'"' => Json::Str(self.string()),
            b't' => self.lit("true", Json::Bool(true)),
            b'f' => self.lit("false", Json::Bool(false)),
            b'n' => self.lit("null", Json::Null),
            _ => {
                let start = self.i;
                while self.i < self.s.len()
                    && matches!(
                        self.s[self.i],
                        b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                    )
                {
                    self.i += 1;
                }
                let t = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
                Json::Num(
                    t.parse()
                        .unwrap_or_else(|_| panic!("manifest: bad number {t:?} at {start}")),
                )
            }
        }
    }
    fn string(&mut self) -> String {
        assert_eq!(
            self.peek(),
            b'"',
            "manifest: expected a string at byte {}",
            self.i
        );
        self.i += 1;
        let mut out = String::new();
        loop {
            let c = self.peek();
            self.i += 1;
            match c {
                b'"' => return out,
                b'\\' => {
                    let e = self.peek();
                    self.i += 1;
                    match e {
                        b'n' => out.push('\n'),
                        b't' => out.push('\t'),
                        b'r' => out.push('\r'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'u' => {
                            let hex =
                                std::str::from_utf8(&self.s[self.i..self.i + 4]).unwrap_or("");
                            let cp = u32::from_str_radix(hex, 16).unwrap_or(0xFFFD);
                            out.push(char::from_u32(cp).unwrap_or('\u{FFFD}'));
                            self.i += 4;
                        }
                        other => out.push(other as char),
                    }
                }
                _ => {
                    // Re-decode multi-byte UTF-8 sequences whole.
                    let start = self.i - 1;
                    let len = match c {
                        0x00..=0x7F => 1,
                        0xC0..=0xDF => 2,
                        0xE0..=0xEF => 3,
                        _ => 4,
                    };
                    self.i = start + len;
                    out.push_str(std::str::from_utf8(&self.s[start..self.i]).unwrap_or("\u{FFFD}"));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Golden data
// ---------------------------------------------------------------------------------------------

/// Bytes stored in u64 words, so every block type's alignment is met whatever the allocator
/// does for a `Vec<u8>`.
struct Aligned {
    words: Vec<u64>,
    len: usize,
}

impl Aligned {
    fn zeroed(len: usize) -> Aligned {
        Aligned {
            words: vec![0u64; len.div_ceil(8)],
            len,
        }
    }
    fn from_bytes(b: &[u8]) -> Aligned {
        let mut a = Aligned::zeroed(b.len());
        a.bytes_mut().copy_from_slice(b);
        a
    }
    fn bytes(&self) -> &[u8] {
        // SAFETY: `words` owns at least `len` initialised bytes; u8 has no alignment or validity
        // requirements, and the borrow is tied to `self`.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, with the exclusive borrow of `self`.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), self.len) }
    }
}

struct Target {
    name: String,
    fmt: BlockFormat,
    imatrix: bool,
    blocks: Aligned,
    row_hashes: Vec<u64>,
}

struct Golden {
    row_len: usize,
    rows_per_category: usize,
    n_rows: usize,
    categories: Vec<String>,
    input: Vec<f32>,
    imatrix: Vec<f32>,
    targets: Vec<Target>,
    files: BTreeMap<String, usize>,
}

impl Golden {
    fn target(&self, name: &str) -> &Target {
        self.targets
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("golden set has no target {name:?}"))
    }
    fn row(&self, r: usize) -> &[f32] {
        &self.input[r * self.row_len..(r + 1) * self.row_len]
    }
    fn category(&self, r: usize) -> usize {
        r / self.rows_per_category
    }
    fn imatrix_for_row(&self, r: usize) -> &[f32] {
        let c = self.category(r);
        &self.imatrix[c * self.row_len..(c + 1) * self.row_len]
    }
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("golden")
}

fn read(name: &str) -> Vec<u8> {
    let p = golden_dir().join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

fn f32s(b: &[u8]) -> Vec<f32> {
    assert_eq!(b.len() % 4, 0);
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn format_by_name(name: &str) -> BlockFormat {
    BlockFormat::ALL
        .into_iter()
        .find(|f| f.name() == name)
        .unwrap_or_else(|| panic!("unknown ggml type {name:?} in manifest"))
}

fn golden() -> &'static Golden {
    static G: OnceLock<Golden> = OnceLock::new();
    G.get_or_init(|| {
        let text = String::from_utf8(read("manifest.json")).expect("manifest is UTF-8");
        let m = Parser::parse(&text);
        let row_len = m.get("row_len").usize();
        let rows_per_category = m.get("rows_per_category").usize();
        let n_rows = m.get("n_rows").usize();
        let categories: Vec<String> = m
            .get("categories")
            .arr()
            .iter()
            .map(|c| c.str().to_string())
            .collect();
        assert_eq!(n_rows, rows_per_category * categories.len());

        let files: BTreeMap<String, usize> = m
            .get("files")
            .obj()
            .iter()
            .map(|(k, v)| (k.clone(), v.get("bytes").usize()))
            .collect();
        let checked = |name: &str| -> Vec<u8> {
            let b = read(name);
            let want = files
                .get(name)
                .unwrap_or_else(|| panic!("{name} not listed in manifest files"));
            assert_eq!(b.len(), *want, "{name}: size differs from manifest");
            b
        };

        let input = f32s(&checked(m.get("input").str()));
        assert_eq!(input.len(), n_rows * row_len, "input.f32 shape");
        assert!(input.iter().all(|v| v.is_finite()));
        let imatrix = f32s(&checked(m.get("imatrix").str()));
        assert_eq!(
            imatrix.len(),
            categories.len() * row_len,
            "imatrix.f32 shape"
        );

        let targets = m
            .get("targets")
            .arr()
            .iter()
            .map(|t| {
                let fmt = format_by_name(t.get("type").str());
                let blocks = checked(t.get("blocks").str());
                let row_bytes = fmt
                    .row_size(row_len)
                    .expect("row_len is a whole number of blocks");
                assert_eq!(
                    blocks.len(),
                    n_rows * row_bytes,
                    "{}: block bytes",
                    t.get("name").str()
                );
                let hashes = checked(t.get("dequant_row_hashes").str());
                assert_eq!(hashes.len(), n_rows * 8);
                Target {
                    name: t.get("name").str().to_string(),
                    fmt,
                    imatrix: t.get("imatrix").bool(),
                    blocks: Aligned::from_bytes(&blocks),
                    row_hashes: hashes
                        .chunks_exact(8)
                        .map(|c| {
                            u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                        })
                        .collect(),
                }
            })
            .collect();
        Golden {
            row_len,
            rows_per_category,
            n_rows,
            categories,
            input,
            imatrix,
            targets,
            files,
        }
    })
}

/// FNV-1a, 64-bit, as in make_golden.py.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Σ w·(x − y)² in f64; w = 1 without importance weights.
fn sq_err(x: &[f32], y: &[f32], w: Option<&[f32]>) -> f64 {
    x.iter()
        .zip(y)
        .enumerate()
        .map(|(j, (&a, &b))| {
            let d = f64::from(a) - f64::from(b);
            w.map_or(1.0, |w| f64::from(w[j])) * d * d
        })
        .sum()
}

/// Dequantize one block with our code.
fn dequant_block(fmt: BlockFormat, block: &[u8]) -> Vec<f32> {
    let a = Aligned::from_bytes(block);
    let mut y = vec![0f32; fmt.block_size()];
    dequantize_row_with(scalar_kernels(), fmt, a.bytes(), &mut y)
        .unwrap_or_else(|e| panic!("{fmt:?}: dequantize_row: {e}"));
    y
}

struct Diff {
    /// Up to 8 bytes from the first differing one: (ours, llama.cpp's).
    bytes: (Vec<u8>, Vec<u8>),
    row: usize,
    block: usize,
    first_byte: usize,
    n_bytes: usize,
    ours_err: f64,
    theirs_err: f64,
    /// Both blocks dequantize to equal values (`==`, so +0 and -0 count as equal): the bytes
    /// differ only where the scale makes them irrelevant, e.g. a zero f16 scale.
    same_values: bool,
}

/// Quantize every golden row of `name` with our scalar reference kernels and compare with llama.cpp's blocks.
fn check_quantize(name: &str) {
    let g = golden();
    let t = g.target(name);
    let fmt = t.fmt;
    let bs = fmt.block_size();
    let ts = fmt.type_size();
    let row_bytes = fmt.row_size(g.row_len).expect("whole blocks");
    let blocks_per_row = g.row_len / bs;
    let total = g.n_rows * blocks_per_row;
    let theirs_all = t.blocks.bytes();

    let mut ours = Aligned::zeroed(row_bytes);
    let mut diffs: Vec<Diff> = Vec::new();
    let mut per_category = vec![0usize; g.categories.len()];
    for r in 0..g.n_rows {
        let x = g.row(r);
        let qw = t.imatrix.then(|| g.imatrix_for_row(r));
        quantize_row_with(scalar_kernels(), fmt, x, qw, ours.bytes_mut())
            .unwrap_or_else(|e| panic!("{name} row {r}: quantize_row: {e}"));
        let theirs = &theirs_all[r * row_bytes..(r + 1) * row_bytes];
        for b in 0..blocks_per_row {
            let o = &ours.bytes()[b * ts..(b + 1) * ts];
            let l = &theirs[b * ts..(b + 1) * ts];
            if o == l {
                continue;
            }
            let xb = &x[b * bs..(b + 1) * bs];
            let wb = qw.map(|w| &w[b * bs..(b + 1) * bs]);
            let first_byte = o.iter().zip(l).position(|(a, b)| a != b).unwrap_or(0);
            let n_bytes = o.iter().zip(l).filter(|(a, b)| a != b).count();
            let end = (first_byte + 8).min(ts);
            let (yo, yl) = (dequant_block(fmt, o), dequant_block(fmt, l));
            let same_values = yo.iter().zip(&yl).all(|(a, b)| a == b);
            diffs.push(Diff {
                same_values,
                bytes: (o[first_byte..end].to_vec(), l[first_byte..end].to_vec()),
                row: r,
                block: b,
                first_byte,
                n_bytes,
                ours_err: sq_err(xb, &yo, wb),
                theirs_err: sq_err(xb, &yl, wb),
            });
            per_category[g.category(r)] += 1;
        }
    }

    let identical = total - diffs.len();
    let pct = 100.0 * identical as f64 / total as f64;
    println!(
        "{name}: {identical}/{total} blocks byte-identical ({pct:.3} %), {} differ",
        diffs.len()
    );
    if !diffs.is_empty() {
        let by_cat: Vec<String> = g
            .categories
            .iter()
            .zip(&per_category)
            .filter(|(_, n)| **n > 0)
            .map(|(c, n)| format!("{c}: {n}"))
            .collect();
        println!("  differing blocks by category: {}", by_cat.join(", "));
        let same_n = diffs.iter().filter(|d| d.same_values).count();
        println!("  of these, {same_n} dequantize to equal values (== on f32, ±0 equal)");
    }
    let worse: Vec<&Diff> = diffs
        .iter()
        .filter(|d| d.ours_err > d.theirs_err * (1.0 + 1e-6) + f64::MIN_POSITIVE)
        .collect();
    for (i, d) in diffs.iter().enumerate().take(40) {
        let global = d.row * blocks_per_row + d.block;
        println!(
            "  block {global} (row {} [{}], block {} in row): first differing byte {} of {ts} \
             ({} bytes differ{}); sq err ours {:.6e} vs llama.cpp {:.6e}{}",
            d.row,
            g.categories[g.category(d.row)],
            d.block,
            d.first_byte,
            d.n_bytes,
            if d.same_values { ", same values" } else { "" },
            d.ours_err,
            d.theirs_err,
            if d.ours_err > d.theirs_err * (1.0 + 1e-6) + f64::MIN_POSITIVE {
                "  <-- WORSE"
            } else {
                ""
            }
        );
        if i < 8 {
            println!(
                "      ours {:02x?}\n      llama {:02x?}",
                d.bytes.0, d.bytes.1
            );
        }
    }
    if diffs.len() > 40 {
        println!("  ... {} more differing blocks", diffs.len() - 40);
    }
    let same = diffs.iter().filter(|d| d.same_values).count();
    assert!(
        pct >= 99.0,
        "{name}: only {pct:.3} % of blocks are byte-identical to llama.cpp's (need ≥ 99 %); \
         {same} of the {} differing blocks dequantize to the same values as llama.cpp's",
        diffs.len()
    );
    assert!(
        worse.is_empty(),
        "{name}: {} differing block(s) have a larger{} squared error than llama.cpp's; first: row {} block {}",
        worse.len(),
        if t.imatrix { " importance-weighted" } else { "" },
        worse[0].row,
        worse[0].block
    );
}

/// Dequantize llama.cpp's blocks with our code; every row must hash like gguf-py's dequantization.
fn check_dequantize(name: &str) {
    let g = golden();
    let t = g.target(name);
    let row_bytes = t.fmt.row_size(g.row_len).expect("whole blocks");
    let mut y = vec![0f32; g.row_len];
    let mut bad = Vec::new();
    for r in 0..g.n_rows {
        let src = &t.blocks.bytes()[r * row_bytes..(r + 1) * row_bytes];
        dequantize_row_with(scalar_kernels(), t.fmt, src, &mut y)
            .unwrap_or_else(|e| panic!("{name} row {r}: dequantize_row: {e}"));
        let bytes: Vec<u8> = y.iter().flat_map(|v| v.to_le_bytes()).collect();
        if fnv1a64(&bytes) != t.row_hashes[r] {
            bad.push(r);
        }
    }
    println!(
        "{name}: {}/{} rows dequantize bit-identically to gguf-py",
        g.n_rows - bad.len(),
        g.n_rows
    );
    for &r in bad.iter().take(10) {
        println!("  row {r} [{}] differs", g.categories[g.category(r)]);
    }
    assert!(
        bad.is_empty(),
        "{name}: {} rows dequantize differently from gguf-py (first: row {}); run \
         `python3 -c \"import gguf\"`-side decoding of tests/golden/{name}.bin to see the values",
        bad.len(),
        bad[0]
    );
}

macro_rules! golden_tests {
    ($($quant:ident, $dequant:ident => $name:literal;)*) => {
        $(
            #[test]
            fn $quant() {
                check_quantize($name);
            }
            #[test]
            fn $dequant() {
                check_dequantize($name);
            }
        )*
        /// Every target in the manifest has a test here, and vice versa.
        #[test]
        fn every_manifest_target_is_tested() {
            let mut here: Vec<&str> = vec![$($name),*];
            let mut there: Vec<&str> = golden().targets.iter().map(|t| t.name.as_str()).collect();
            here.sort_unstable();
            there.sort_unstable();
            assert_eq!(here, there);
        }
    };
}

golden_tests! {
    quantize_q4_0, dequantize_q4_0 => "Q4_0";
    quantize_q4_1, dequantize_q4_1 => "Q4_1";
    quantize_q5_0, dequantize_q5_0 => "Q5_0";
    quantize_q5_1, dequantize_q5_1 => "Q5_1";
    quantize_q8_0, dequantize_q8_0 => "Q8_0";
    quantize_q4_k, dequantize_q4_k => "Q4_K";
    quantize_q5_k, dequantize_q5_k => "Q5_K";
    quantize_q6_k, dequantize_q6_k => "Q6_K";
    quantize_q4_0_imatrix, dequantize_q4_0_imatrix => "Q4_0.imatrix";
    quantize_q4_k_imatrix, dequantize_q4_k_imatrix => "Q4_K.imatrix";
    quantize_q5_k_imatrix, dequantize_q5_k_imatrix => "Q5_K.imatrix";
    quantize_q6_k_imatrix, dequantize_q6_k_imatrix => "Q6_K.imatrix";
    quantize_q2_k, dequantize_q2_k => "Q2_K";
    quantize_q3_k, dequantize_q3_k => "Q3_K";
    quantize_iq4_nl, dequantize_iq4_nl => "IQ4_NL";
    quantize_iq4_xs, dequantize_iq4_xs => "IQ4_XS";
    quantize_q2_k_imatrix, dequantize_q2_k_imatrix => "Q2_K.imatrix";
    quantize_q3_k_imatrix, dequantize_q3_k_imatrix => "Q3_K.imatrix";
    quantize_iq4_nl_imatrix, dequantize_iq4_nl_imatrix => "IQ4_NL.imatrix";
    quantize_iq4_xs_imatrix, dequantize_iq4_xs_imatrix => "IQ4_XS.imatrix";
}

/// The golden files are what the manifest says: every listed file exists with its size, the
/// categories cover the rows, and the FNV implementation agrees with make_golden.py's
/// (standard test vector: FNV-1a-64("a") = 0xaf63dc4c8601ec8c).
#[test]
fn golden_files_are_complete() {
    let g = golden();
    for (name, bytes) in &g.files {
        let len = std::fs::metadata(golden_dir().join(name))
            .map(|m| m.len())
            .unwrap_or(u64::MAX);
        assert_eq!(len, *bytes as u64, "{name}");
    }
    assert_eq!(g.n_rows, g.categories.len() * g.rows_per_category);
    assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
}
