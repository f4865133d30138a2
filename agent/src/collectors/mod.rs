//! Prometheus collectors. Each builds const metrics at scrape time from kernel maps, the cgroup
//! registry snapshot or cheap files, so the series of a cgroup disappear once it leaves the
//! retain window. Slow work lives in the tasks of `crate::tasks`.

pub mod agent;
pub mod cgroup_resources;
pub mod containers;
pub mod exits;
pub mod host;
pub mod oom;
pub mod seccomp;

use std::{collections::BTreeMap, fmt};

use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        MetricType,
        counter::ConstCounter,
        gauge::ConstGauge,
    },
};

/// Label names and values of one series.
pub type Labels = Vec<(&'static str, String)>;

/// Encodes one family of const metrics, one per label set.
fn family<N: Copy, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    series: &BTreeMap<Labels, N>,
    metric: impl Fn(N) -> M,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in series {
        metric(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// Encodes one counter family (`name` without `_total`: the encoder appends it).
pub fn counter_family<N>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &BTreeMap<Labels, N>,
) -> fmt::Result
where
    N: Copy,
    ConstCounter<N>: EncodeMetric,
{
    family(encoder, name, help, MetricType::Counter, series, ConstCounter::new)
}

/// Encodes one gauge family.
pub fn gauge_family<N>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &BTreeMap<Labels, N>,
) -> fmt::Result
where
    N: Copy,
    ConstGauge<N>: EncodeMetric,
{
    family(encoder, name, help, MetricType::Gauge, series, ConstGauge::new)
}

/// Encodes a metric with no labels.
pub fn single_gauge<N>(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: N) -> fmt::Result
where
    ConstGauge<N>: EncodeMetric,
{
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

/// Encodes a counter with no labels.
pub fn single_counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(metric)
}
