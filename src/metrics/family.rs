//! Building Prometheus metric families from values read at scrape time: a small builder over the
//! `prometheus` crate's data model, so that counts the pools already keep (census, atomics,
//! latency histograms) are exposed without a second copy kept up to date on the data path.

use crate::pool::latency::{LatencySnapshot, BOUNDS_US};
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};

/// One metric family under construction.
pub struct Family(MetricFamily);

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(name, value)| {
            let mut l = LabelPair::default();
            l.set_name((*name).to_owned());
            l.set_value((*value).to_owned());
            l
        })
        .collect()
}

impl Family {
    fn new(name: &str, help: &str, kind: MetricType) -> Self {
        let mut f = MetricFamily::default();
        f.set_name(name.to_owned());
        f.set_help(help.to_owned());
        f.set_field_type(kind);
        Self(f)
    }

    pub fn gauge(name: &str, help: &str) -> Self {
        Self::new(name, help, MetricType::GAUGE)
    }

    pub fn counter(name: &str, help: &str) -> Self {
        Self::new(name, help, MetricType::COUNTER)
    }

    pub fn histogram(name: &str, help: &str) -> Self {
        Self::new(name, help, MetricType::HISTOGRAM)
    }

    /// A gauge's or a counter's sample.
    pub fn add(&mut self, pairs: &[(&str, &str)], value: f64) {
        let mut m = proto::Metric::from_label(labels(pairs));
        match self.0.get_field_type() {
            MetricType::GAUGE => {
                let mut g = proto::Gauge::default();
                g.set_value(value);
                m.set_gauge(g);
            }
            _ => {
                let mut c = proto::Counter::default();
                c.set_value(value);
                m.set_counter(c);
            }
        }
        self.0.mut_metric().push(m);
    }

    /// A histogram's sample, from microseconds to the base unit, seconds.
    pub fn add_latency(&mut self, pairs: &[(&str, &str)], s: &LatencySnapshot) {
        let mut h = proto::Histogram::default();
        h.set_sample_count(s.count());
        h.set_sample_sum(s.sum_us as f64 / 1e6);
        // The encoder adds +Inf itself, from the sample count.
        let buckets = BOUNDS_US
            .iter()
            .zip(s.cumulative.iter())
            .map(|(bound, count)| {
                let mut b = proto::Bucket::default();
                b.set_upper_bound(*bound as f64 / 1e6);
                b.set_cumulative_count(*count);
                b
            })
            .collect();
        h.set_bucket(buckets);
        let mut m = proto::Metric::from_label(labels(pairs));
        m.set_histogram(h);
        self.0.mut_metric().push(m);
    }

    pub fn done(self) -> MetricFamily {
        self.0
    }
}
