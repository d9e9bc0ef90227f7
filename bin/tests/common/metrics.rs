//! Prometheus text format as the tests read it.

use super::*;

/// One Prometheus sample.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// Parses Prometheus text format, asserting every non-comment line is a valid sample.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, rest) = match line.find('{') {
            Some(_) => {
                let close = line
                    .rfind('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line}"));
                (&line[..close + 1], line[close + 1..].trim())
            }
            None => line
                .split_once(' ')
                .unwrap_or_else(|| panic!("no value: {line}")),
        };
        let (name, labels) = match series.find('{') {
            Some(open) => (
                &series[..open],
                parse_labels(&series[open + 1..series.len() - 1]),
            ),
            None => (series, BTreeMap::new()),
        };
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
            "bad metric name in {line:?}"
        );
        let value_text = rest
            .split_whitespace()
            .next()
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value = match value_text {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        out.push(Sample {
            name: name.trim().to_string(),
            labels,
            value,
        });
    }
    out
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let (k, after) = rest
            .split_once('=')
            .unwrap_or_else(|| panic!("bad labels {s:?}"));
        let after = after
            .strip_prefix('"')
            .unwrap_or_else(|| panic!("unquoted label in {s:?}"));
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(match n {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end.unwrap_or_else(|| panic!("unterminated label in {s:?}"));
        map.insert(k.trim().to_string(), value);
        rest = after[end + 1..].trim_start_matches(',').trim();
    }
    map
}

/// `posrelay_connections{role=…,shard=…}` by shard for `role`.
pub fn connections_by_shard(samples: &[Sample], role: &str) -> BTreeMap<String, f64> {
    samples
        .iter()
        .filter(|s| {
            s.name == "posrelay_connections"
                && s.labels.get("role").map(|r| r.as_str()) == Some(role)
        })
        .map(|s| (s.labels.get("shard").cloned().unwrap_or_default(), s.value))
        .collect()
}
