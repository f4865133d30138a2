//! Exposition formats: which one a scraper asks for (OpenMetrics or the text format 0.0.4, as
//! Prometheus's client libraries negotiate), the text-format rewrite of the OpenMetrics
//! encoder's output, and gzip when the scraper accepts it.

use std::io::Write as _;

use flate2::{Compression, write::GzEncoder};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    /// The Prometheus text format 0.0.4.
    Text,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// The media ranges of an `Accept` or `Accept-Encoding` header with their quality (1 when not
/// given), in header order.
fn ranges(header: &str) -> impl Iterator<Item = (&str, f32)> {
    header.split(',').filter_map(|part| {
        let mut params = part.split(';');
        let range = params.next()?.trim();
        if range.is_empty() {
            return None;
        }
        // The weight's "q=" is case-insensitive (RFC 9110, 12.4.2): "gzip;Q=0" refuses gzip.
        let q = params
            .filter_map(|p| p.trim().split_once('='))
            .filter(|(name, _)| name.eq_ignore_ascii_case("q"))
            .find_map(|(_, q)| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        Some((range, q))
    })
}

/// The format a scraper's `Accept` header prefers: OpenMetrics when it ranks it at least as high
/// as the text format, the text format otherwise and when it names neither (no header, `*/*`,
/// curl).
pub fn negotiate(accept: Option<&str>) -> Format {
    let mut best: Option<(Format, f32)> = None;
    for (range, q) in ranges(accept.unwrap_or_default()) {
        let format = if range.eq_ignore_ascii_case("application/openmetrics-text") {
            Format::OpenMetrics
        } else if range.eq_ignore_ascii_case("text/plain") || range.eq_ignore_ascii_case("text/*") || range == "*/*" {
            Format::Text
        } else {
            continue;
        };
        // A tie goes to OpenMetrics, whichever range the header lists first.
        if q > 0.0 && best.is_none_or(|(_, bq)| q > bq || q == bq && format == Format::OpenMetrics) {
            best = Some((format, q));
        }
    }
    best.map_or(Format::Text, |(f, _)| f)
}

/// Whether `Accept-Encoding` allows gzip (`gzip` or `*` with a non-zero quality).
pub fn accepts_gzip(accept_encoding: Option<&str>) -> bool {
    let mut gzip = None;
    let mut any = None;
    for (coding, q) in ranges(accept_encoding.unwrap_or_default()) {
        if coding.eq_ignore_ascii_case("gzip") {
            gzip = Some(q);
        } else if coding == "*" {
            any = Some(q);
        }
    }
    gzip.or(any).is_some_and(|q| q > 0.0)
}

/// Compresses a response body (fast level: scrapes are frequent and the text compresses ~10x
/// even so).
pub fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = GzEncoder::new(Vec::with_capacity(body.len() / 8 + 64), Compression::fast());
    enc.write_all(body)?;
    enc.finish()
}

/// Rewrites OpenMetrics text, as prometheus-client encodes it, into the text format 0.0.4:
/// a counter family's HELP and TYPE lines name its samples (`x_total`), `info` becomes a gauge
/// named `x_info`, `unknown` becomes `untyped`, and `# UNIT`, `# EOF`, `_created` samples and
/// exemplars go. Label values are escaped alike in both formats.
pub fn to_text_format(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    // The HELP line waits for its TYPE line, which tells the name the text format wants.
    let mut help: Option<(&str, &str)> = None;
    let mut counter: Option<&str> = None;
    let mut rest = om;
    while !rest.is_empty() {
        if !rest.starts_with('#') {
            // A run of sample lines, up to the next comment line: copied in one piece unless it
            // holds what the text format has no place for (never the case for cgwatch's own
            // collectors, whose samples have no exemplars and no `_created`).
            let end = rest.find("\n#").map_or(rest.len(), |i| i + 1);
            let (samples, next) = rest.split_at(end);
            if let Some((name, text)) = help.take() {
                // A HELP without a TYPE: keep it as it was.
                push_line(&mut out, &["# HELP ", name, " ", text]);
            }
            if samples.contains(" # ") || counter.is_some_and(|c| samples.contains(&format!("{c}_created"))) {
                for line in samples.lines() {
                    if counter.is_some_and(|c| line.strip_prefix(c).is_some_and(|r| r.starts_with("_created"))) {
                        continue;
                    }
                    push_line(&mut out, &[strip_exemplar(line)]);
                }
            } else {
                out.push_str(samples);
                if !samples.ends_with('\n') {
                    out.push('\n');
                }
            }
            rest = next;
            continue;
        }
        let (line, next) = rest.split_once('\n').unwrap_or((rest, ""));
        rest = next;
        if let Some(r) = line.strip_prefix("# HELP ") {
            let (name, text) = r.split_once(' ').unwrap_or((r, ""));
            help = Some((name, text));
            continue;
        }
        if let Some(r) = line.strip_prefix("# TYPE ") {
            let (name, kind) = r.split_once(' ').unwrap_or((r, "untyped"));
            let (suffix, kind) = match kind {
                "counter" => ("_total", "counter"),
                "info" => ("_info", "gauge"),
                "unknown" => ("", "untyped"),
                other => ("", other),
            };
            counter = (kind == "counter").then_some(name);
            if let Some((hname, text)) = help.take().filter(|(h, _)| *h == name) {
                push_line(&mut out, &["# HELP ", hname, suffix, " ", text]);
            }
            push_line(&mut out, &["# TYPE ", name, suffix, " ", kind]);
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        if let Some((name, text)) = help.take() {
            push_line(&mut out, &["# HELP ", name, " ", text]);
        }
        push_line(&mut out, &[line]);
    }
    out
}

fn push_line(out: &mut String, parts: &[&str]) {
    for p in parts {
        out.push_str(p);
    }
    out.push('\n');
}

/// A sample line without its OpenMetrics exemplar (` # {...} value`), found outside quotes.
fn strip_exemplar(line: &str) -> &str {
    let bytes = line.as_bytes();
    let mut in_quotes = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_quotes => i += 1,
            b'"' => in_quotes = !in_quotes,
            b'#' if !in_quotes && i > 0 && bytes[i - 1] == b' ' => return line[..i - 1].trim_end(),
            _ => {}
        }
        i += 1;
    }
    line
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    #[test]
    fn negotiates_like_the_client_libraries() {
        // Prometheus 2.42's scrape header.
        let prom = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate(Some(prom)), Format::OpenMetrics);
        // Prometheus with the text format preferred (scrape_protocols in newer versions).
        assert_eq!(negotiate(Some("text/plain;version=0.0.4;q=1,application/openmetrics-text;q=0.5")), Format::Text);
        assert_eq!(negotiate(None), Format::Text);
        assert_eq!(negotiate(Some("*/*")), Format::Text);
        assert_eq!(negotiate(Some("application/json")), Format::Text);
        assert_eq!(negotiate(Some("application/openmetrics-text")), Format::OpenMetrics);
        assert_eq!(negotiate(Some("application/openmetrics-text;q=0, text/plain")), Format::Text);
        assert_eq!(negotiate(Some(",;;q=x,,")), Format::Text);
        // Found by `cargo xtask fuzz` (http_headers): the weight's "q" is case-insensitive.
        assert_eq!(negotiate(Some("application/openmetrics-text;version=;Q=.0, text/plain;q=0.3")), Format::Text);
        // Found by the same target: ranked as high as the text format, OpenMetrics wins however
        // the header orders them.
        assert_eq!(negotiate(Some("text/plain;version=0.0.4;q=1,application/openmetrics-text;qx=0.5")), Format::OpenMetrics);
        assert_eq!(negotiate(Some("*/*, application/openmetrics-text")), Format::OpenMetrics);
        assert_eq!(negotiate(Some("text/plain;q=0.5, application/openmetrics-text;q=0.4")), Format::Text);
        assert_eq!(negotiate(Some("TEXT/*;q=0.5, application/openmetrics-text;q=0.4")), Format::Text);
    }

    #[test]
    fn gzip_only_when_accepted() {
        assert!(accepts_gzip(Some("gzip")));
        assert!(accepts_gzip(Some("deflate, gzip;q=0.5")));
        assert!(accepts_gzip(Some("*")));
        assert!(!accepts_gzip(Some("gzip;q=0")));
        assert!(!accepts_gzip(Some("gzip;q=0, *")));
        assert!(!accepts_gzip(Some("gzip;Q=0")));
        assert!(!accepts_gzip(Some("identity")));
        assert!(!accepts_gzip(None));
        let body = "x 1\n".repeat(1000);
        let mut back = String::new();
        flate2::read::GzDecoder::new(&gzip(body.as_bytes()).unwrap()[..]).read_to_string(&mut back).unwrap();
        assert_eq!(back, body);
    }

    /// Runs of plain samples are copied whole; every family keeps its samples, in order.
    #[test]
    fn plain_sample_runs_are_copied_whole() {
        let om = "# HELP c Counts.\n# TYPE c counter\nc_total{a=\"1\"} 1\nc_total{a=\"#2\"} 2\n\
                  # HELP g Gauges.\n# TYPE g gauge\ng{a=\"x\"} 0.5\ng 7\n# EOF\n";
        assert_eq!(
            to_text_format(om),
            "# HELP c_total Counts.\n# TYPE c_total counter\nc_total{a=\"1\"} 1\nc_total{a=\"#2\"} 2\n\
             # HELP g Gauges.\n# TYPE g gauge\ng{a=\"x\"} 0.5\ng 7\n"
        );
    }

    #[test]
    fn rewrites_openmetrics_into_the_text_format() {
        let om = "# HELP a_seconds Time.\n# TYPE a_seconds counter\n# UNIT a_seconds seconds\n\
                  a_seconds_total{x=\"q\\\"#\"} 3 # {trace=\"1\"} 1.0\na_seconds_created 17.5\n\
                  # HELP g A gauge.\n# TYPE g gauge\ng 1.5\n\
                  # HELP i Info.\n# TYPE i info\ni_info{v=\"1\"} 1\n# EOF\n";
        let text = to_text_format(om);
        assert_eq!(
            text,
            "# HELP a_seconds_total Time.\n# TYPE a_seconds_total counter\na_seconds_total{x=\"q\\\"#\"} 3\n\
             # HELP g A gauge.\n# TYPE g gauge\ng 1.5\n\
             # HELP i_info Info.\n# TYPE i_info gauge\ni_info{v=\"1\"} 1\n"
        );
    }
}
