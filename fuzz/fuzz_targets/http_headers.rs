//! `negotiate` (Accept) and `accepts_gzip` (Accept-Encoding) on arbitrary header values, checked
//! against what they document: OpenMetrics when the scraper ranks it at least as high as the text
//! format (text/plain, text/*, */*), the text format otherwise; gzip when `gzip`, else `*`, has
//! a non-zero quality. Media ranges, codings and the `q` parameter are case-insensitive
//! (RFC 9110, 12.4.2 and 12.5). Input: the Accept value, a newline, the Accept-Encoding value.
#![no_main]

use cgwatch::web::exposition::{Format, accepts_gzip, negotiate};
use libfuzzer_sys::fuzz_target;

/// (range, q) of each element, q from its first `q` parameter that parses, else 1.
fn elements(header: &str) -> Vec<(String, f32)> {
    header
        .split(',')
        .filter_map(|part| {
            let mut params = part.split(';');
            let range = params.next()?.trim().to_ascii_lowercase();
            if range.is_empty() {
                return None;
            }
            let q = params
                .filter_map(|p| {
                    let p = p.trim();
                    let (name, value) = p.split_once('=')?;
                    name.eq_ignore_ascii_case("q").then_some(value)
                })
                .find_map(|v| v.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            Some((range, q))
        })
        .collect()
}

fn best(elements: &[(String, f32)], ranges: &[&str]) -> f32 {
    elements.iter().filter(|(r, q)| ranges.contains(&r.as_str()) && *q > 0.0).map(|(_, q)| *q).fold(0.0, f32::max)
}

fn last(elements: &[(String, f32)], coding: &str) -> Option<f32> {
    elements.iter().rev().find(|(r, _)| r == coding).map(|(_, q)| *q)
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (accept, encoding) = text.split_once('\n').unwrap_or((&text, ""));

    let e = elements(accept);
    let om = best(&e, &["application/openmetrics-text"]);
    let plain = best(&e, &["text/plain", "text/*", "*/*"]);
    let want = if om > 0.0 && om >= plain { Format::OpenMetrics } else { Format::Text };
    assert_eq!(negotiate(Some(accept)), want, "Accept: {accept:?}");

    let e = elements(encoding);
    let want = last(&e, "gzip").or(last(&e, "*")).is_some_and(|q| q > 0.0);
    assert_eq!(accepts_gzip(Some(encoding)), want, "Accept-Encoding: {encoding:?}");

    assert_eq!(negotiate(None), Format::Text);
    assert!(!accepts_gzip(None));
});
