//! Exposition formats: which one a scraper asks for (OpenMetrics or the text format 0.0.4, as
//! Prometheus's client libraries negotiate; `crate::encoding` writes either), and gzip when the
//! scraper accepts it.

use std::io::Write as _;

use flate2::{Compression, write::GzEncoder};

pub use crate::encoding::Format;

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

/// A gzip stream at the fast level (scrapes are frequent and the text compresses ~20x even so),
/// into a buffer of `capacity`.
pub fn gzip_stream(capacity: usize) -> GzEncoder<Vec<u8>> {
    GzEncoder::new(Vec::with_capacity(capacity), Compression::fast())
}

/// Compresses a response body.
pub fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = gzip_stream(body.len() / 16 + 64);
    enc.write_all(body)?;
    enc.finish()
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
}
