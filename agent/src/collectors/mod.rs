//! Collectors. Each builds its samples at scrape time from kernel maps, the cgroup registry
//! snapshot or cheap files, so the series of a cgroup disappear once it leaves the retain
//! window, and writes them with `crate::encoding`. Slow work lives in the tasks of
//! `crate::tasks`. Names, types and help texts come from `crate::catalog`.

pub mod agent;
pub mod cgroup_resources;
pub mod containers;
pub mod events;
pub mod exits;
pub mod host;
pub mod lifecycle;
pub mod oom;
pub mod seccomp;
pub mod seccomp_observable;

use std::{borrow::Cow, collections::BTreeMap, fmt, sync::Arc};

use crate::{
    catalog::{Kind, Metric},
    encoding::{Encoder, Value},
};

/// Writes some families into a scrape.
pub trait Collector: Send + Sync + fmt::Debug {
    fn encode(&self, encoder: &mut Encoder<'_>);
}

/// The collectors a scrape runs, in order.
#[derive(Debug, Default)]
pub struct Collectors(Vec<Box<dyn Collector>>);

impl Collectors {
    pub fn register(&mut self, collector: impl Collector + 'static) {
        self.0.push(Box::new(collector));
    }

    pub fn encode(&self, encoder: &mut Encoder<'_>) {
        for c in &self.0 {
            c.encode(encoder);
        }
    }
}

/// Label names and values of one series (for small families; per-cgroup families use the
/// registry's rendered labels).
pub type Labels = Vec<(&'static str, String)>;

/// A per-cgroup series of an event counter: the cgroup's rendered labels (see
/// `crate::encoding::render_labels`), then the family's own label values.
pub type EventSeries<const N: usize> = (Arc<str>, [Cow<'static, str>; N]);

fn family<N: Value>(encoder: &mut Encoder<'_>, m: &Metric, series: &BTreeMap<Labels, N>) {
    let mut family = encoder.family(m);
    let mut labels: Vec<(&str, &str)> = Vec::new();
    for (set, value) in series {
        labels.clear();
        labels.extend(set.iter().map(|(k, v)| (*k, v.as_str())));
        family.sample(&labels, *value);
    }
}

/// Encodes one counter family, a series per label set.
pub fn counter_family<N: Value>(encoder: &mut Encoder<'_>, m: &Metric, series: &BTreeMap<Labels, N>) {
    debug_assert_eq!(m.kind, Kind::Counter, "{}", m.name);
    family(encoder, m, series);
}

/// Encodes one gauge family, a series per label set.
pub fn gauge_family<N: Value>(encoder: &mut Encoder<'_>, m: &Metric, series: &BTreeMap<Labels, N>) {
    debug_assert_eq!(m.kind, Kind::Gauge, "{}", m.name);
    family(encoder, m, series);
}

/// Encodes a gauge with no labels.
pub fn single_gauge<N: Value>(encoder: &mut Encoder<'_>, m: &Metric, value: N) {
    debug_assert_eq!(m.kind, Kind::Gauge, "{}", m.name);
    encoder.family(m).sample(&[], value);
}

/// Encodes a per-cgroup event counter family: each series' rendered cgroup labels, then
/// `names` with the series' values. Counts of the same series (kernel keys that fold into one
/// label set, counts carried over from a removed cgroup) are summed; series come out sorted.
pub fn event_family<const N: usize>(
    encoder: &mut Encoder<'_>,
    m: &Metric,
    names: [&'static str; N],
    mut series: Vec<(EventSeries<N>, u64)>,
) {
    debug_assert!(m.per_cgroup && m.labels == names, "{}", m.name);
    // A sort and a pass: with 10,000 cgroups, cheaper than a map of owned label sets.
    series.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut family = encoder.family(m);
    let mut rest = &series[..];
    while let Some(((cgroup, values), _)) = rest.first() {
        let same = rest.iter().take_while(|(s, _)| s == &rest[0].0).count();
        let count = rest[..same].iter().fold(0u64, |a, (_, n)| a.wrapping_add(*n));
        let own: [(&str, &str); N] = std::array::from_fn(|i| (names[i], &*values[i]));
        family.sample_after(cgroup, &own, count);
        rest = &rest[same..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        catalog,
        encoding::{Format, render_labels},
    };

    /// Keys that fold into one label set are summed into one series; series come out sorted.
    #[test]
    fn event_series_of_one_label_set_are_summed() {
        let (a, b) = (render_labels([("cgroup", "/a")]), render_labels([("cgroup", "/b")]));
        let exit = |cgroup: &Arc<str>, reason: &'static str, n| ((cgroup.clone(), [Cow::Borrowed(reason), Cow::Borrowed("")]), n);
        let series = vec![exit(&b, "error", 1), exit(&a, "error", 2), exit(&b, "error", 3), exit(&a, "success", u64::MAX)];
        let mut encoder = Encoder::new(Format::Text, 0);
        event_family(&mut encoder, &catalog::PROCESS_EXITS, ["reason", "signal"], series);
        let text = String::from_utf8(encoder.finish().unwrap()).unwrap();
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                "cgwatch_process_exits_total{cgroup=\"/a\",reason=\"error\",signal=\"\"} 2",
                "cgwatch_process_exits_total{cgroup=\"/a\",reason=\"success\",signal=\"\"} 18446744073709551615",
                "cgwatch_process_exits_total{cgroup=\"/b\",reason=\"error\",signal=\"\"} 4",
            ]
        );
    }
}
