//! Prometheus metrics. Handles are registered once at start-up on a recorder
//! owned by the server (no global recorder, so tests can run many servers in
//! one process); the hot path only touches atomics.
//!
//! The dashboard's numbers ([`Metrics::snapshot`]) are read back from the
//! same text exposition `/metrics` serves: there is no second set of
//! counters to keep in step, and the two cannot disagree.

use std::collections::{BTreeMap, HashMap};

use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use serde::Serialize;
use switchboard_protocol::ErrorCode;

pub struct Metrics {
    handle: PrometheusHandle,
    pub connections: Gauge,
    pub sockets: Gauge,
    pub parked: Gauge,
    pub resumes: Counter,
    pub memory_trims: Counter,
    pub users: Gauge,
    pub rooms: Gauge,
    pub connections_accepted: Counter,
    pub connections_refused: Counter,
    pub messages_in: Counter,
    pub messages_out: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub fanout_seconds: Histogram,
    pub slow_consumer_disconnects: Counter,
    pub heartbeat_timeouts: Counter,
    pub tls_handshake_failures: Counter,
    pub tls_reloads: Counter,
    pub tls_reload_failures: Counter,
    errors: Vec<(ErrorCode, Counter)>,
    _recorder: PrometheusRecorder,
}

const FANOUT: &str = "switchboard_fanout_duration_seconds";
const ERRORS: &str = "switchboard_errors_total";
const CONNECTIONS: &str = "switchboard_connections";
const SOCKETS: &str = "switchboard_sockets";
const PARKED: &str = "switchboard_connections_parked";
const RESUMES: &str = "switchboard_connections_resumed_total";
const MEMORY_TRIMS: &str = "switchboard_memory_trims_total";
const USERS: &str = "switchboard_users";
const ROOMS: &str = "switchboard_rooms";
const ACCEPTED: &str = "switchboard_connections_accepted_total";
const REFUSED: &str = "switchboard_connections_refused_total";
const MESSAGES_IN: &str = "switchboard_messages_in_total";
const MESSAGES_OUT: &str = "switchboard_messages_out_total";
const BYTES_IN: &str = "switchboard_bytes_in_total";
const BYTES_OUT: &str = "switchboard_bytes_out_total";
const SLOW_CONSUMERS: &str = "switchboard_slow_consumer_disconnects_total";
const HEARTBEAT_TIMEOUTS: &str = "switchboard_heartbeat_timeouts_total";

/// The numbers the dashboard shows, as `/metrics` has them now: gauges as
/// they stand, counters and the histogram as totals since start (a reader
/// takes differences between two snapshots for rates and for the latency
/// of an interval).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    pub connections: u64,
    pub sockets: u64,
    pub parked: u64,
    pub resumes: u64,
    pub users: u64,
    pub rooms: u64,
    pub connections_accepted: u64,
    pub connections_refused: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub slow_consumer_disconnects: u64,
    pub heartbeat_timeouts: u64,
    /// Every error code, zeros included, so a reader sees the full set.
    pub errors: BTreeMap<&'static str, u64>,
    pub fanout_seconds: HistogramSnapshot,
}

/// A Prometheus histogram: cumulative counts per upper bound (`le`,
/// ascending; the `+Inf` bucket is `count`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistogramSnapshot {
    pub buckets: Vec<Bucket>,
    pub count: u64,
    pub sum: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bucket {
    pub le: f64,
    pub count: u64,
}

/// The samples of a Prometheus text exposition: each series as written
/// (name plus `{labels}`) with its value. Comments and blank lines are
/// skipped. The value is after the last space: label values may hold
/// spaces, values never do (and this exporter writes no timestamps).
fn samples(text: &str) -> HashMap<&str, f64> {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().ok()?,
            };
            Some((series, value))
        })
        .collect()
}

impl Metrics {
    pub fn new() -> Metrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(FANOUT.into()),
                &[
                    0.000_01, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01,
                    0.025, 0.05, 0.1, 0.25,
                ],
            )
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let meta = Metadata::new(module_path!(), metrics::Level::INFO, None);
        let counter = |name: &'static str, help: &'static str| {
            recorder.describe_counter(name.into(), None, help.into());
            recorder.register_counter(&Key::from_static_name(name), &meta)
        };
        let gauge = |name: &'static str, help: &'static str| {
            recorder.describe_gauge(name.into(), None, help.into());
            recorder.register_gauge(&Key::from_static_name(name), &meta)
        };
        recorder.describe_counter(
            ERRORS.into(),
            None,
            "error events sent to clients, by code".into(),
        );
        let errors = ErrorCode::ALL
            .iter()
            .map(|&code| {
                let key = Key::from_parts(ERRORS, vec![Label::new("code", code.as_str())]);
                (code, recorder.register_counter(&key, &meta))
            })
            .collect();
        recorder.describe_histogram(
            FANOUT.into(),
            Some(metrics::Unit::Seconds),
            "time to frame a room message once and queue it to every member".into(),
        );
        Metrics {
            handle: recorder.handle(),
            connections: gauge(CONNECTIONS, "open WebSocket connections"),
            sockets: gauge(
                SOCKETS,
                "open client connections of every kind (HTTP, TLS handshakes, WebSockets); --max-connections bounds it",
            ),
            parked: gauge(
                PARKED,
                "idle WebSocket connections parked: watched by the server's own epoll, without a task of their own",
            ),
            resumes: counter(
                RESUMES,
                "parked connections put back into a task (bytes other than pings and pongs, a close, a full socket, a deadline)",
            ),
            memory_trims: counter(
                MEMORY_TRIMS,
                "times freed memory was given back to the system after a wave of connections opened or closed",
            ),
            users: gauge(USERS, "distinct identified users online"),
            rooms: gauge(ROOMS, "rooms with at least one member"),
            connections_accepted: counter(
                ACCEPTED,
                "WebSocket upgrades accepted",
            ),
            connections_refused: counter(
                REFUSED,
                "connections refused at accept (connection limits) and WebSocket upgrades refused (limits, bad handshakes)",
            ),
            messages_in: counter(
                MESSAGES_IN,
                "data frames received from clients",
            ),
            messages_out: counter(
                MESSAGES_OUT,
                "frames queued to clients (one per recipient)",
            ),
            bytes_in: counter(
                BYTES_IN,
                "bytes read from client sockets",
            ),
            bytes_out: counter(
                BYTES_OUT,
                "bytes written to client sockets",
            ),
            fanout_seconds: recorder.register_histogram(&Key::from_static_name(FANOUT), &meta),
            slow_consumer_disconnects: counter(
                SLOW_CONSUMERS,
                "connections closed because their outbound queue overflowed",
            ),
            heartbeat_timeouts: counter(
                HEARTBEAT_TIMEOUTS,
                "connections closed for sending nothing for two heartbeat intervals",
            ),
            tls_handshake_failures: counter(
                "switchboard_tls_handshake_failures_total",
                "TLS handshakes that failed or timed out",
            ),
            tls_reloads: counter(
                "switchboard_tls_reloads_total",
                "TLS certificate reloads (SIGHUP) that succeeded",
            ),
            tls_reload_failures: counter(
                "switchboard_tls_reload_failures_total",
                "TLS certificate reloads (SIGHUP) that failed; the previous certificate stays",
            ),
            errors,
            _recorder: recorder,
        }
    }

    pub fn error(&self, code: ErrorCode) {
        if let Some((_, counter)) = self.errors.iter().find(|(c, _)| *c == code) {
            counter.increment(1);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// The dashboard's numbers, read from [`Metrics::render`]'s output.
    pub fn snapshot(&self) -> Snapshot {
        let text = self.render();
        let samples = samples(&text);
        // Every series here is registered at start-up, so each is rendered;
        // a missing one would read 0 rather than fail the dashboard.
        let get = |series: &str| samples.get(series).copied().unwrap_or(0.0) as u64;
        let errors = ErrorCode::ALL
            .iter()
            .map(|code| {
                let series = format!("{ERRORS}{{code=\"{}\"}}", code.as_str());
                (code.as_str(), get(&series))
            })
            .collect();
        let bucket_prefix = format!("{FANOUT}_bucket{{le=\"");
        let mut buckets: Vec<Bucket> = samples
            .iter()
            .filter_map(|(series, &count)| {
                let le = series.strip_prefix(&bucket_prefix)?.strip_suffix("\"}")?;
                let le: f64 = le.parse().ok()?;
                le.is_finite().then_some(Bucket {
                    le,
                    count: count as u64,
                })
            })
            .collect();
        buckets.sort_by(|a, b| a.le.total_cmp(&b.le));
        Snapshot {
            connections: get(CONNECTIONS),
            sockets: get(SOCKETS),
            parked: get(PARKED),
            resumes: get(RESUMES),
            users: get(USERS),
            rooms: get(ROOMS),
            connections_accepted: get(ACCEPTED),
            connections_refused: get(REFUSED),
            messages_in: get(MESSAGES_IN),
            messages_out: get(MESSAGES_OUT),
            bytes_in: get(BYTES_IN),
            bytes_out: get(BYTES_OUT),
            slow_consumer_disconnects: get(SLOW_CONSUMERS),
            heartbeat_timeouts: get(HEARTBEAT_TIMEOUTS),
            errors,
            fanout_seconds: HistogramSnapshot {
                buckets,
                count: get(&format!("{FANOUT}_count")),
                sum: samples
                    .get(format!("{FANOUT}_sum").as_str())
                    .copied()
                    .unwrap_or(0.0),
            },
        }
    }

    /// Periodic housekeeping for histograms; called by the heartbeat sweeper.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_reads_what_metrics_renders() {
        let m = Metrics::new();
        let empty = m.snapshot();
        assert_eq!(empty.messages_in, 0);
        assert_eq!(empty.errors.len(), ErrorCode::ALL.len());
        assert_eq!(
            empty.fanout_seconds.buckets.len(),
            13,
            "{:?}",
            empty.fanout_seconds
        );

        m.connections.increment(3.0);
        m.users.increment(2.0);
        m.messages_in.increment(5);
        m.messages_out.increment(15);
        m.slow_consumer_disconnects.increment(1);
        m.error(ErrorCode::RateLimited);
        m.error(ErrorCode::RateLimited);
        m.fanout_seconds.record(0.000_3);
        m.fanout_seconds.record(0.02);
        let s = m.snapshot();
        assert_eq!((s.connections, s.users, s.rooms), (3, 2, 0));
        assert_eq!((s.messages_in, s.messages_out), (5, 15));
        assert_eq!(s.slow_consumer_disconnects, 1);
        assert_eq!(s.errors["rate_limited"], 2);
        assert_eq!(s.errors["bad_request"], 0);
        let h = &s.fanout_seconds;
        assert_eq!(h.count, 2);
        assert!((h.sum - 0.0203).abs() < 1e-9, "{}", h.sum);
        let at = |le: f64| h.buckets.iter().find(|b| b.le == le).map(|b| b.count);
        assert_eq!(at(0.000_25), Some(0));
        assert_eq!(at(0.000_5), Some(1));
        assert_eq!(at(0.025), Some(2));
        assert!(h.buckets.windows(2).all(|w| w[0].le < w[1].le));

        // The same figures as the exposition, line for line.
        let text = m.render();
        assert!(
            text.contains("switchboard_messages_out_total 15\n"),
            "{text}"
        );
        assert!(text.contains("switchboard_errors_total{code=\"rate_limited\"} 2\n"));
    }

    #[test]
    fn samples_skip_comments_and_take_the_value_after_the_last_space() {
        let text =
            "# HELP a x y\n# TYPE a counter\na 4\n\nb{k=\"v w\"} 1.5\nc_bucket{le=\"+Inf\"} +Inf\n";
        let s = samples(text);
        assert_eq!(s.len(), 3);
        assert_eq!(s["a"], 4.0);
        assert_eq!(s["b{k=\"v w\"}"], 1.5);
        assert_eq!(s["c_bucket{le=\"+Inf\"}"], f64::INFINITY);
    }
}
