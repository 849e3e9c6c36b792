//! Prometheus metrics. Handles are registered once at start-up on a recorder
//! owned by the server (no global recorder, so tests can run many servers in
//! one process); the hot path only touches atomics.

use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use switchboard_protocol::ErrorCode;

pub struct Metrics {
    handle: PrometheusHandle,
    pub connections: Gauge,
    pub sockets: Gauge,
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
            "switchboard_errors_total".into(),
            None,
            "error events sent to clients, by code".into(),
        );
        let errors = ErrorCode::ALL
            .iter()
            .map(|&code| {
                let key = Key::from_parts(
                    "switchboard_errors_total",
                    vec![Label::new("code", code.as_str())],
                );
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
            connections: gauge("switchboard_connections", "open WebSocket connections"),
            sockets: gauge(
                "switchboard_sockets",
                "open client connections of every kind (HTTP, TLS handshakes, WebSockets); --max-connections bounds it",
            ),
            users: gauge("switchboard_users", "distinct identified users online"),
            rooms: gauge("switchboard_rooms", "rooms with at least one member"),
            connections_accepted: counter(
                "switchboard_connections_accepted_total",
                "WebSocket upgrades accepted",
            ),
            connections_refused: counter(
                "switchboard_connections_refused_total",
                "connections refused at accept (connection limits) and WebSocket upgrades refused (limits, bad handshakes)",
            ),
            messages_in: counter(
                "switchboard_messages_in_total",
                "data frames received from clients",
            ),
            messages_out: counter(
                "switchboard_messages_out_total",
                "frames queued to clients (one per recipient)",
            ),
            bytes_in: counter(
                "switchboard_bytes_in_total",
                "bytes read from client sockets",
            ),
            bytes_out: counter(
                "switchboard_bytes_out_total",
                "bytes written to client sockets",
            ),
            fanout_seconds: recorder.register_histogram(&Key::from_static_name(FANOUT), &meta),
            slow_consumer_disconnects: counter(
                "switchboard_slow_consumer_disconnects_total",
                "connections closed because their outbound queue overflowed",
            ),
            heartbeat_timeouts: counter(
                "switchboard_heartbeat_timeouts_total",
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
