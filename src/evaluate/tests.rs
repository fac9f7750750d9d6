use super::*;

fn run(cat: &str, seed: u64, img: f64, pix: f64, pro: f64, fit: f64, ms: f64) -> RunMetrics {
    RunMetrics {
        category: cat.into(),
        seed,
        accuracy: Accuracy {
            image_auroc: img,
            pixel_auroc: pix,
            aupro: pro,
            image_f1_max: 0.5,
        },
        fit_seconds: fit,
        predict_ms_per_image: ms,
        n_train: 10,
        n_test: 6,
        n_anomalous: 4,
        memory_bank_rows: 100,
    }
}

/// Two categories × three seeds; the seeds of `b` are listed in another order on purpose.
fn runs() -> Vec<RunMetrics> {
    vec![
        run("a", 0, 0.90, 0.80, 0.70, 1.0, 10.0),
        run("a", 1, 0.96, 0.82, 0.74, 2.0, 20.0),
        run("a", 2, 0.93, 0.84, 0.72, 3.0, 30.0),
        run("b", 2, 1.00, 0.90, 0.60, 5.0, 50.0),
        run("b", 0, 0.80, 0.92, 0.64, 4.0, 40.0),
        run("b", 1, 0.90, 0.94, 0.62, 6.0, 60.0),
    ]
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

fn assert_stat(s: Stat, mean: f64, min: f64, max: f64) {
    assert!(
        close(s.mean, mean) && close(s.min, min) && close(s.max, max),
        "{s:?} vs ({mean}, {min}, {max})"
    );
}

#[test]
fn stat_of_hand_values() {
    assert_stat(Stat::of(&[3.0, 1.0, 2.0, 6.0]).unwrap(), 3.0, 1.0, 6.0);
    assert_stat(Stat::of(&[-0.5]).unwrap(), -0.5, -0.5, -0.5);
    assert_eq!(Stat::of(&[]), None);
}

#[test]
fn summarize_groups_by_category_in_order_of_appearance() {
    let s = summarize(&runs()).unwrap();
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].name, "a");
    assert_eq!(s[0].seeds, vec![0, 1, 2]);
    assert_stat(s[0].image_auroc, 0.93, 0.90, 0.96);
    assert_stat(s[0].pixel_auroc, 0.82, 0.80, 0.84);
    assert_stat(s[0].aupro, 0.72, 0.70, 0.74);
    assert_stat(s[0].fit_seconds, 2.0, 1.0, 3.0);
    assert_stat(s[0].predict_ms_per_image, 20.0, 10.0, 30.0);
    assert_eq!(s[1].name, "b");
    assert_eq!(s[1].seeds, vec![2, 0, 1]);
    assert_stat(s[1].image_auroc, 0.90, 0.80, 1.00);
    assert_stat(s[1].pixel_auroc, 0.92, 0.90, 0.94);
    assert_stat(s[1].aupro, 0.62, 0.60, 0.64);
    assert_stat(s[1].image_f1_max, 0.5, 0.5, 0.5);
}

#[test]
fn mean_row_averages_categories_seed_by_seed() {
    let m = mean_over_categories(&runs()).unwrap();
    assert_eq!(m.name, "mean");
    assert_eq!(m.seeds, vec![0, 1, 2]);
    // Seed 0: (0.90+0.80)/2 = 0.85; seed 1: (0.96+0.90)/2 = 0.93; seed 2: (0.93+1.00)/2 = 0.965.
    assert_stat(m.image_auroc, (0.85 + 0.93 + 0.965) / 3.0, 0.85, 0.965);
    // Pixel AUROC per seed: 0.86, 0.88, 0.87.
    assert_stat(m.pixel_auroc, 0.87, 0.86, 0.88);
    // Fit seconds per seed: 2.5, 4, 4.
    assert_stat(m.fit_seconds, 3.5, 2.5, 4.0);
}

#[test]
fn aggregation_rejects_bad_grids() {
    assert!(summarize(&[]).is_err());
    assert!(mean_over_categories(&[]).is_err());
    let mut dup = runs();
    dup.push(run("a", 1, 0.5, 0.5, 0.5, 1.0, 1.0));
    let e = summarize(&dup).unwrap_err().to_string();
    assert!(e.contains("seed 1") && e.contains('a'), "{e}");
    // Category b lacks seed 1.
    let missing: Vec<_> = runs()
        .into_iter()
        .filter(|r| !(r.category == "b" && r.seed == 1))
        .collect();
    assert!(summarize(&missing).is_ok());
    let e = mean_over_categories(&missing).unwrap_err().to_string();
    assert!(e.contains("no run with seed 1"), "{e}");
    // Category b has an extra seed 7 that a lacks.
    let mut extra = runs();
    extra.push(run("b", 7, 0.5, 0.5, 0.5, 1.0, 1.0));
    let e = mean_over_categories(&extra).unwrap_err().to_string();
    assert!(e.contains("seed 7"), "{e}");
}

#[test]
fn markdown_table_matches_hand_written_text() {
    let r = runs();
    let s = summarize(&r).unwrap();
    let m = mean_over_categories(&r).unwrap();
    let expected = "\
| category | image AUROC | min | max | pixel AUROC | AUPRO | fit (s) | ms / image |
|:--|--:|--:|--:|--:|--:|--:|--:|
| a | 93.00 | 90.00 | 96.00 | 82.00 | 72.00 | 2.0 | 20.0 |
| b | 90.00 | 80.00 | 100.00 | 92.00 | 62.00 | 5.0 | 50.0 |
| **mean** | 91.50 | 85.00 | 96.50 | 87.00 | 67.00 | 3.5 | 35.0 |
";
    assert_eq!(markdown_table(&s, Some(&m)), expected);
    // A `|` in a name must not break the table.
    let mut odd = s[0].clone();
    odd.name = "x|y".into();
    assert!(markdown_table(&[odd], None).contains("| x\\|y | 93.00 |"));
}

fn info(weights: Option<&str>) -> BenchmarkInfo {
    BenchmarkInfo {
        arch: "resnet18".into(),
        weights: weights.map(String::from),
        coreset_ratio: 0.01,
        seeds: vec![0, 1, 2],
        preprocess: "resize 96, centre crop 64".into(),
        batch_size: 1,
        threads: 2,
    }
}

#[test]
fn markdown_report_has_settings_and_warns_about_random_weights() {
    let r = runs();
    let s = summarize(&r).unwrap();
    let rep = markdown_report(&info(None), &s, None);
    assert!(rep.starts_with("# MVTec AD benchmark\n"));
    assert!(rep.contains("coreset 1%, seeds 0, 1, 2, resize 96, centre crop 64"));
    assert!(rep.contains("random weights"));
    assert!(rep.contains(&markdown_table(&s, None)));
    let rep = markdown_report(&info(Some("w.safetensors")), &s, None);
    assert!(rep.contains("weights `w.safetensors`") && !rep.contains("Warning"));
}

/// A minimal JSON value and recursive-descent parser, written for this test only.
#[derive(Debug, Clone, PartialEq)]
enum J {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

impl J {
    fn get(&self, key: &str) -> &J {
        match self {
            J::Obj(kv) => {
                &kv.iter()
                    .find(|(k, _)| k == key)
                    .unwrap_or_else(|| panic!("no {key}"))
                    .1
            }
            _ => panic!("not an object: {self:?}"),
        }
    }
    fn num(&self) -> f64 {
        match self {
            J::Num(v) => *v,
            _ => panic!("not a number: {self:?}"),
        }
    }
    fn arr(&self) -> &[J] {
        match self {
            J::Arr(v) => v,
            _ => panic!("not an array: {self:?}"),
        }
    }
    fn keys(&self) -> Vec<&str> {
        match self {
            J::Obj(kv) => kv.iter().map(|(k, _)| k.as_str()).collect(),
            _ => panic!("not an object: {self:?}"),
        }
    }
}

struct P<'a> {
    s: &'a [u8],
    i: usize,
}

impl P<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && b" \n\r\t".contains(&self.s[self.i]) {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) {
        self.ws();
        assert_eq!(self.s[self.i], c, "expected {} at {}", c as char, self.i);
        self.i += 1;
    }
    fn lit(&mut self, w: &str) -> bool {
        if self.s[self.i..].starts_with(w.as_bytes()) {
            self.i += w.len();
            true
        } else {
            false
        }
    }
    fn string(&mut self) -> String {
        self.eat(b'"');
        let mut out = String::new();
        loop {
            let c = self.s[self.i];
            self.i += 1;
            match c {
                b'"' => return out,
                b'\\' => {
                    let e = self.s[self.i];
                    self.i += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'n' => out.push('\n'),
                        b'u' => {
                            let h = std::str::from_utf8(&self.s[self.i..self.i + 4]).unwrap();
                            out.push(char::from_u32(u32::from_str_radix(h, 16).unwrap()).unwrap());
                            self.i += 4;
                        }
                        _ => panic!("bad escape {}", e as char),
                    }
                }
                c if c < 0x20 => panic!("raw control character in a string"),
                _ => {
                    // Copy one UTF-8 sequence.
                    let start = self.i - 1;
                    while self.i < self.s.len() && (self.s[self.i] & 0xC0) == 0x80 {
                        self.i += 1;
                    }
                    out.push_str(std::str::from_utf8(&self.s[start..self.i]).unwrap());
                }
            }
        }
    }
    fn value(&mut self) -> J {
        self.ws();
        match self.s[self.i] {
            b'{' => {
                self.i += 1;
                let mut kv = Vec::new();
                self.ws();
                if self.s[self.i] == b'}' {
                    self.i += 1;
                    return J::Obj(kv);
                }
                loop {
                    let k = self.string();
                    self.eat(b':');
                    kv.push((k, self.value()));
                    self.ws();
                    self.i += 1;
                    match self.s[self.i - 1] {
                        b',' => continue,
                        b'}' => return J::Obj(kv),
                        c => panic!("unexpected {} at {}", c as char, self.i),
                    }
                }
            }
            b'[' => {
                self.i += 1;
                let mut v = Vec::new();
                self.ws();
                if self.s[self.i] == b']' {
                    self.i += 1;
                    return J::Arr(v);
                }
                loop {
                    v.push(self.value());
                    self.ws();
                    self.i += 1;
                    match self.s[self.i - 1] {
                        b',' => continue,
                        b']' => return J::Arr(v),
                        c => panic!("unexpected {} at {}", c as char, self.i),
                    }
                }
            }
            b'"' => J::Str(self.string()),
            b'n' => {
                assert!(self.lit("null"));
                J::Null
            }
            b't' => {
                assert!(self.lit("true"));
                J::Bool(true)
            }
            b'f' => {
                assert!(self.lit("false"));
                J::Bool(false)
            }
            _ => {
                let start = self.i;
                while self.i < self.s.len() && b"+-0123456789.eE".contains(&self.s[self.i]) {
                    self.i += 1;
                }
                let t = std::str::from_utf8(&self.s[start..self.i]).unwrap();
                // JSON numbers: no leading '+', no bare '.', no "NaN"/"inf".
                assert!(
                    !t.starts_with('+') && !t.starts_with('.') && !t.is_empty(),
                    "{t:?}"
                );
                J::Num(t.parse().unwrap_or_else(|_| panic!("bad number {t:?}")))
            }
        }
    }
}

fn parse(s: &str) -> J {
    let mut p = P {
        s: s.as_bytes(),
        i: 0,
    };
    let v = p.value();
    p.ws();
    assert_eq!(p.i, s.len(), "trailing text after the JSON value");
    v
}

#[test]
fn json_parser_self_check() {
    let v = parse(r#" {"a": [1, -2.5e1, null, true], "b": {"c": "x\"\\\u0001é"}, "d": []} "#);
    assert_eq!(v.get("a").arr()[1], J::Num(-25.0));
    assert_eq!(v.get("a").arr()[2], J::Null);
    assert_eq!(v.get("b").get("c"), &J::Str("x\"\\\u{1}é".into()));
    assert_eq!(v.keys(), vec!["a", "b", "d"]);
}

#[test]
fn json_report_parses_and_holds_every_run() {
    let mut r = runs();
    for x in r.iter_mut().filter(|x| x.category == "a") {
        x.category = "we\"ird\\name\n".into();
    }
    r[0].fit_seconds = f64::NAN;
    let s = summarize(&r).unwrap();
    let m = mean_over_categories(&runs()).unwrap();
    let text = json_report(&info(Some("C:\\w.safetensors")), &r, &s, Some(&m));
    let v = parse(&text);
    assert_eq!(
        v.keys(),
        vec![
            "benchmark",
            "arch",
            "weights",
            "random_weights",
            "coreset_ratio",
            "seeds",
            "preprocess",
            "batch_size",
            "threads",
            "runs",
            "categories",
            "mean"
        ]
    );
    assert_eq!(v.get("weights"), &J::Str("C:\\w.safetensors".into()));
    assert_eq!(v.get("random_weights"), &J::Bool(false));
    assert_eq!(v.get("coreset_ratio").num(), 0.01);
    assert_eq!(
        v.get("seeds").arr(),
        &[J::Num(0.0), J::Num(1.0), J::Num(2.0)]
    );
    let runs_j = v.get("runs").arr();
    assert_eq!(runs_j.len(), 6);
    assert_eq!(runs_j[0].get("category"), &J::Str("we\"ird\\name\n".into()));
    assert_eq!(runs_j[0].get("fit_seconds"), &J::Null);
    for (j, x) in runs_j.iter().zip(&r) {
        assert_eq!(j.get("seed").num(), x.seed as f64);
        // Shortest round-trip formatting: the exact value comes back.
        assert_eq!(j.get("image_auroc").num(), x.accuracy.image_auroc);
        assert_eq!(j.get("pixel_auroc").num(), x.accuracy.pixel_auroc);
        assert_eq!(j.get("aupro").num(), x.accuracy.aupro);
        assert_eq!(j.get("n_anomalous").num(), 4.0);
        assert_eq!(j.get("memory_bank_rows").num(), 100.0);
    }
    let cats = v.get("categories").arr();
    assert_eq!(cats.len(), 2);
    assert_eq!(cats[1].get("category"), &J::Str("b".into()));
    let img = cats[1].get("image_auroc");
    assert_eq!(
        (
            img.get("mean").num(),
            img.get("min").num(),
            img.get("max").num()
        ),
        (s[1].image_auroc.mean, 0.8, 1.0)
    );
    assert_eq!(v.get("mean").get("category"), &J::Str("mean".into()));
    assert_eq!(
        v.get("mean").get("image_auroc").get("min").num(),
        m.image_auroc.min
    );
    // No mean, no runs, random weights.
    let v = parse(&json_report(&info(None), &[], &[], None));
    assert_eq!(v.get("weights"), &J::Null);
    assert_eq!(v.get("random_weights"), &J::Bool(true));
    assert_eq!(v.get("runs"), &J::Arr(vec![]));
    assert_eq!(v.get("mean"), &J::Null);
}
