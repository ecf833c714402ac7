//! A small parser for the Prometheus text exposition format, for asserting
//! on `/metrics` output.

/// One sample line: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Metric name (including `_bucket` / `_sum` / `_count` suffixes).
    pub name: String,
    /// Label pairs in the order they appear.
    pub labels: Vec<(String, String)>,
    /// The sample value.
    pub value: f64,
}

impl Sample {
    /// Whether every `(key, value)` in `want` is among this sample's labels.
    pub fn has_labels(&self, want: &[(&str, &str)]) -> bool {
        want.iter()
            .all(|(k, v)| self.labels.iter().any(|(lk, lv)| lk == k && lv == v))
    }

    /// The value of label `key`, if present.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses every sample line of `text`; comments, blank and malformed lines
/// are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

/// Parses one sample line (`None` for comments, blanks, or garbage).
pub fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, remaining) = parse_labels(after)?;
        labels = parsed;
        rest = remaining;
    }
    let value = parse_value(rest.split_whitespace().next()?)?;
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Parses `k="v",k2="v2"}` and returns the labels and the text after `}`.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(rest) = s.strip_prefix('}') {
            return Some((labels, rest));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_string();
        s = s[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        };
        labels.push((key, value));
        s = &s[end + 1..];
    }
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => v.parse().ok(),
    }
}

/// All samples named exactly `metric` whose labels include all of `labels`.
pub fn samples(text: &str, metric: &str, labels: &[(&str, &str)]) -> Vec<Sample> {
    parse(text)
        .into_iter()
        .filter(|s| s.name == metric && s.has_labels(labels))
        .collect()
}

/// The value of the single sample named `metric` whose labels include all
/// of `labels` (order-independent). `None` if no line matches; panics if
/// several do (add labels to disambiguate, or use [`sum`]).
pub fn sample(text: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found = samples(text, metric, labels);
    match found.len() {
        0 => None,
        1 => Some(found[0].value),
        n => panic!("{n} samples of {metric} match {labels:?}: {found:?}"),
    }
}

/// Sum of all samples named `metric` whose labels include `labels`
/// (0.0 when none match).
pub fn sum(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text, metric, labels).iter().map(|s| s.value).sum()
}

/// Asserts that [`sample`] finds exactly `expected`; on failure prints
/// every line of that metric.
pub fn assert_sample(text: &str, metric: &str, labels: &[(&str, &str)], expected: f64) {
    let got = sample(text, metric, labels);
    if got != Some(expected) {
        let related: Vec<&str> = text
            .lines()
            .filter(|l| l.trim_start().starts_with(metric))
            .collect();
        panic!(
            "metric {metric}{labels:?}: expected {expected}, got {got:?}\nlines:\n{}",
            related.join("\n")
        );
    }
}

/// Number of sample (non-comment, non-blank) lines whose metric name
/// starts with `prefix`.
pub fn series_count(text: &str, prefix: &str) -> usize {
    parse(text)
        .iter()
        .filter(|s| s.name.starts_with(prefix))
        .count()
}
