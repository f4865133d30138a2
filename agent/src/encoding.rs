//! The exposition encoder: families and samples written straight into a byte buffer in the
//! format the scraper asked for, OpenMetrics 1.0 or the Prometheus text format 0.0.4 (they differ
//! only in a counter's HELP and TYPE names and OpenMetrics' closing `# EOF`).
//!
//! With 10,000 cgroups a scrape is some 100,000 samples: each is a few appends here, and the
//! labels every series of a cgroup shares are escaped once ([`render_labels`], kept by the
//! registry) instead of once per series. A gzipped scrape streams through the compressor in
//! 64 KiB pieces ([`Encoder::streaming`]) and never holds the whole uncompressed body.

use std::{
    fmt,
    io::{self, Write},
    sync::Arc,
};

use crate::catalog::{Kind, Metric};

/// An exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    /// The Prometheus text format 0.0.4.
    Text,
}

/// A sample value, written as Prometheus parses it.
pub trait Value: Copy {
    fn write_to(self, out: &mut Vec<u8>);
}

impl Value for u64 {
    fn write_to(self, out: &mut Vec<u8>) {
        out.extend_from_slice(itoa::Buffer::new().format(self).as_bytes());
    }
}

impl Value for i64 {
    fn write_to(self, out: &mut Vec<u8>) {
        out.extend_from_slice(itoa::Buffer::new().format(self).as_bytes());
    }
}

impl Value for f64 {
    fn write_to(self, out: &mut Vec<u8>) {
        let text = if self.is_nan() {
            "NaN"
        } else if self.is_infinite() {
            if self > 0.0 { "+Inf" } else { "-Inf" }
        } else {
            return out.extend_from_slice(dtoa::Buffer::new().format_finite(self).as_bytes());
        };
        out.extend_from_slice(text.as_bytes());
    }
}

/// Output past this goes to the streaming sink (the gzip stream).
const FLUSH_AT: usize = 64 * 1024;

/// Writes one exposition.
pub struct Encoder<'s> {
    buf: Vec<u8>,
    format: Format,
    sink: Option<&'s mut dyn Write>,
    error: Option<io::Error>,
}

impl fmt::Debug for Encoder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoder").field("format", &self.format).field("buffered", &self.buf.len()).finish()
    }
}

impl<'s> Encoder<'s> {
    /// An exposition built whole in memory (`finish` returns it).
    pub fn new(format: Format, capacity: usize) -> Encoder<'static> {
        Encoder { buf: Vec::with_capacity(capacity), format, sink: None, error: None }
    }

    /// An exposition handed to `sink` as it is written.
    pub fn streaming(format: Format, sink: &'s mut dyn Write) -> Encoder<'s> {
        Encoder { buf: Vec::with_capacity(FLUSH_AT + FLUSH_AT / 4), format, sink: Some(sink), error: None }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Starts the family of a catalog metric: its HELP and TYPE lines. A counter's samples are
    /// named `<name>_total`, which the text format's HELP and TYPE lines name too. A histogram's
    /// samples are written with [`Family::histogram`].
    pub fn family<'e>(&'e mut self, m: &Metric) -> Family<'e, 's> {
        let counter = m.kind == Kind::Counter;
        let suffix = if counter && self.format == Format::Text { "_total" } else { "" };
        for (what, text) in [("# HELP ", m.help), ("# TYPE ", m.kind.as_str())] {
            self.buf.extend_from_slice(what.as_bytes());
            self.buf.extend_from_slice(m.name.as_bytes());
            self.buf.extend_from_slice(suffix.as_bytes());
            self.buf.push(b' ');
            self.buf.extend_from_slice(text.as_bytes());
            self.buf.push(b'\n');
        }
        Family { enc: self, name: m.name, counter }
    }

    fn flush_if_full(&mut self) {
        if self.buf.len() < FLUSH_AT {
            return;
        }
        if let Some(sink) = self.sink.as_mut() {
            if self.error.is_none()
                && let Err(e) = sink.write_all(&self.buf)
            {
                self.error = Some(e);
            }
            self.buf.clear();
        }
    }

    /// Ends the exposition (`# EOF` in OpenMetrics). Returns it, or for a streaming encoder
    /// nothing once the sink has it all.
    pub fn finish(mut self) -> io::Result<Vec<u8>> {
        if self.format == Format::OpenMetrics {
            self.buf.extend_from_slice(b"# EOF\n");
        }
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        match self.sink.take() {
            Some(sink) => {
                sink.write_all(&self.buf)?;
                Ok(Vec::new())
            }
            None => Ok(self.buf),
        }
    }
}

/// The samples of one family.
pub struct Family<'e, 's> {
    enc: &'e mut Encoder<'s>,
    name: &'static str,
    counter: bool,
}

impl Family<'_, '_> {
    /// A sample with these labels (values escaped here).
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl Value) {
        self.sample_after("", labels, value);
    }

    /// A sample whose first labels are `rendered` (from [`render_labels`]), then `labels`.
    pub fn sample_after(&mut self, rendered: &str, labels: &[(&str, &str)], value: impl Value) {
        let buf = &mut self.enc.buf;
        buf.extend_from_slice(self.name.as_bytes());
        if self.counter {
            buf.extend_from_slice(b"_total");
        }
        if !rendered.is_empty() || !labels.is_empty() {
            buf.push(b'{');
            buf.extend_from_slice(rendered.as_bytes());
            let mut first = rendered.is_empty();
            for (key, value) in labels {
                if !first {
                    buf.push(b',');
                }
                first = false;
                push_label(buf, key, value);
            }
            buf.push(b'}');
        }
        buf.push(b' ');
        value.write_to(buf);
        buf.push(b'\n');
        self.enc.flush_if_full();
    }
}

impl Family<'_, '_> {
    /// One histogram series: `<name>_bucket` for each upper bound in `bounds` with the count of
    /// observations at or below it (`counts` per bucket, not cumulative; one more for +Inf), then
    /// `<name>_sum` and `<name>_count`. The same in both formats.
    pub fn histogram(&mut self, labels: &[(&str, &str)], bounds: &[f64], counts: &[u64], sum: f64) {
        debug_assert_eq!(counts.len(), bounds.len() + 1);
        let name = self.name;
        let mut cumulative = 0u64;
        let mut le = Vec::new();
        for (i, n) in counts.iter().enumerate() {
            cumulative += n;
            le.clear();
            match bounds.get(i) {
                Some(b) => b.write_to(&mut le),
                None => le.extend_from_slice(b"+Inf"),
            }
            let le = std::str::from_utf8(&le).unwrap_or("+Inf");
            let mut all: Vec<(&str, &str)> = labels.to_vec();
            all.push(("le", le));
            self.raw_sample(name, "_bucket", &all, cumulative);
        }
        self.raw_sample(name, "_sum", labels, sum);
        self.raw_sample(name, "_count", labels, cumulative);
    }

    fn raw_sample(&mut self, name: &str, suffix: &str, labels: &[(&str, &str)], value: impl Value) {
        let buf = &mut self.enc.buf;
        buf.extend_from_slice(name.as_bytes());
        buf.extend_from_slice(suffix.as_bytes());
        if !labels.is_empty() {
            buf.push(b'{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                push_label(buf, key, value);
            }
            buf.push(b'}');
        }
        buf.push(b' ');
        value.write_to(buf);
        buf.push(b'\n');
        self.enc.flush_if_full();
    }
}

/// `key="value"`, the value escaped as both formats want (backslash, double quote, newline).
fn push_label(buf: &mut Vec<u8>, key: &str, value: &str) {
    buf.extend_from_slice(key.as_bytes());
    buf.extend_from_slice(b"=\"");
    if value.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        for b in value.bytes() {
            match b {
                b'\\' => buf.extend_from_slice(b"\\\\"),
                b'"' => buf.extend_from_slice(b"\\\""),
                b'\n' => buf.extend_from_slice(b"\\n"),
                _ => buf.push(b),
            }
        }
    } else {
        buf.extend_from_slice(value.as_bytes());
    }
    buf.push(b'"');
}

/// Labels rendered once for many samples (`k="v",k2="v2"`, escaped): the leading labels of
/// [`Family::sample_after`].
pub fn render_labels<'a>(labels: impl IntoIterator<Item = (&'static str, &'a str)>) -> Arc<str> {
    let mut buf = Vec::new();
    for (i, (key, value)) in labels.into_iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        push_label(&mut buf, key, value);
    }
    // Valid UTF-8: label names and values are, and escaping adds ASCII only.
    Arc::from(String::from_utf8(buf).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog;

    fn encode(format: Format) -> String {
        let mut enc = Encoder::new(format, 0);
        let mut f = enc.family(&catalog::PROCESS_EXITS);
        let cgroup = render_labels([("cgroup", "/a\"b\\c\nd")]);
        f.sample_after(&cgroup, &[("reason", "signal"), ("signal", "SIGKILL")], 3u64);
        f.sample_after(&cgroup, &[], 1u64);
        let mut f = enc.family(&catalog::HOST_MEMORY_USAGE_RATIO);
        f.sample(&[], 0.5f64);
        let mut f = enc.family(&catalog::CGROUPS_NOT_SHOWN);
        f.sample(&[("x", "")], -2i64);
        enc.family(&catalog::PINNED);
        String::from_utf8(enc.finish().unwrap()).unwrap()
    }

    #[test]
    fn both_formats_name_counters_as_each_wants() {
        let help = catalog::PROCESS_EXITS.help;
        let samples = "cgwatch_process_exits_total{cgroup=\"/a\\\"b\\\\c\\nd\",reason=\"signal\",signal=\"SIGKILL\"} 3\n\
                       cgwatch_process_exits_total{cgroup=\"/a\\\"b\\\\c\\nd\"} 1\n";
        let gauges = format!(
            "# HELP cgwatch_host_memory_usage_ratio {}\n# TYPE cgwatch_host_memory_usage_ratio gauge\n\
             cgwatch_host_memory_usage_ratio 0.5\n\
             # HELP cgwatch_cgroups_not_shown {}\n# TYPE cgwatch_cgroups_not_shown gauge\ncgwatch_cgroups_not_shown{{x=\"\"}} -2\n\
             # HELP cgwatch_pinned {}\n# TYPE cgwatch_pinned gauge\n",
            catalog::HOST_MEMORY_USAGE_RATIO.help,
            catalog::CGROUPS_NOT_SHOWN.help,
            catalog::PINNED.help
        );
        assert_eq!(
            encode(Format::OpenMetrics),
            format!(
                "# HELP cgwatch_process_exits {help}\n# TYPE cgwatch_process_exits counter\n{samples}{gauges}# EOF\n"
            )
        );
        assert_eq!(
            encode(Format::Text),
            format!("# HELP cgwatch_process_exits_total {help}\n# TYPE cgwatch_process_exits_total counter\n{samples}{gauges}")
        );
    }

    #[test]
    fn histograms_in_both_formats() {
        for format in [Format::OpenMetrics, Format::Text] {
            let mut enc = Encoder::new(format, 0);
            enc.family(&catalog::CONTAINER_START_DURATION).histogram(&[("runtime", "podman")], &[0.5, 1.0], &[1, 0, 2], 7.25);
            let text = String::from_utf8(enc.finish().unwrap()).unwrap();
            let name = "cgwatch_container_start_duration_seconds";
            let samples = format!(
                "{name}_bucket{{runtime=\"podman\",le=\"0.5\"}} 1\n{name}_bucket{{runtime=\"podman\",le=\"1.0\"}} 1\n\
                 {name}_bucket{{runtime=\"podman\",le=\"+Inf\"}} 3\n{name}_sum{{runtime=\"podman\"}} 7.25\n{name}_count{{runtime=\"podman\"}} 3\n"
            );
            let eof = if format == Format::OpenMetrics { "# EOF\n" } else { "" };
            let help = catalog::CONTAINER_START_DURATION.help;
            assert_eq!(text, format!("# HELP {name} {help}\n# TYPE {name} histogram\n{samples}{eof}"));
        }
    }

    #[test]
    fn values_as_prometheus_parses_them() {
        let text = |v: f64| {
            let mut out = Vec::new();
            v.write_to(&mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(text(0.0), "0.0");
        assert_eq!(text(0.000908645), "0.000908645");
        assert_eq!(text(1e-9), "1e-9");
        assert_eq!(text(f64::NAN), "NaN");
        assert_eq!(text(f64::INFINITY), "+Inf");
        assert_eq!(text(f64::NEG_INFINITY), "-Inf");
        let mut out = Vec::new();
        u64::MAX.write_to(&mut out);
        assert_eq!(out, b"18446744073709551615");
    }

    /// A streaming encoder hands everything to its sink, in order, and keeps nothing.
    #[test]
    fn streaming_matches_the_whole_body() {
        let fill = |enc: &mut Encoder<'_>| {
            let mut f = enc.family(&catalog::CGROUP_CPU_USAGE);
            for i in 0..20_000u64 {
                f.sample(&[("cgroup", &format!("/c{i}"))], i as f64 / 3.0);
            }
        };
        let mut whole = Encoder::new(Format::OpenMetrics, 0);
        fill(&mut whole);
        let whole = whole.finish().unwrap();
        assert!(whole.len() > 4 * FLUSH_AT);
        let mut sink = Vec::new();
        let mut streamed = Encoder::streaming(Format::OpenMetrics, &mut sink);
        fill(&mut streamed);
        assert!(streamed.finish().unwrap().is_empty());
        assert_eq!(sink, whole);
    }
}
