//! Bounds on what callers may send and hold: message and batch sizes, connections,
//! streams, in-flight calls and bytes, and the connection timeouts.

use super::{duration, options::options, positive};
use crate::api::TransportLimits;

options! {
    /// Sizes, connection and call bounds, and connection timing.
    #[command(next_help_heading = "Transport limits")]
    pub struct TransportArgs {
        /// Largest accepted gRPC message in bytes [default: 1048576].
        #[arg(long, env = "STEPGATE_MAX_MESSAGE_BYTES", value_name = "BYTES")]
        pub max_message_bytes: usize,
        /// Most checks in one BatchCheck [default: 256].
        #[arg(long, env = "STEPGATE_MAX_BATCH", value_name = "N")]
        pub max_batch: usize,
        /// Most connections each listener holds; more are accepted and closed at once
        /// [default: 256, lowered to fit RLIMIT_NOFILE].
        #[arg(long, env = "STEPGATE_MAX_CONNECTIONS", value_name = "N")]
        pub max_connections: usize,
        /// Most concurrent HTTP/2 streams per gRPC connection [default: 64].
        #[arg(long, env = "STEPGATE_MAX_CONCURRENT_STREAMS", value_name = "N")]
        pub max_concurrent_streams: usize,
        /// Longest a new connection may take to send its HTTP/2 preface (or HTTP/1 request
        /// headers, or TLS handshake) [default: 10s].
        #[arg(long, env = "STEPGATE_HANDSHAKE_TIMEOUT", value_name = "DURATION")]
        pub handshake_timeout: String,
        /// Longest a call may take to arrive whole and be answered [default: 10s].
        #[arg(long, env = "STEPGATE_REQUEST_TIMEOUT", value_name = "DURATION")]
        pub request_timeout: String,
        /// Close a connection with no call in flight for this long [default: 5m].
        #[arg(long, env = "STEPGATE_IDLE_TIMEOUT", value_name = "DURATION")]
        pub idle_timeout: String,
        /// PING an HTTP/2 connection silent for this long [default: 60s].
        #[arg(long, env = "STEPGATE_KEEPALIVE_INTERVAL", value_name = "DURATION")]
        pub keepalive_interval: String,
        /// Close the connection when a PING is not answered within this [default: 20s].
        #[arg(long, env = "STEPGATE_KEEPALIVE_TIMEOUT", value_name = "DURATION")]
        pub keepalive_timeout: String,
        /// Most request bytes held at once across all connections; past it requests get
        /// RESOURCE_EXHAUSTED [default: 67108864].
        #[arg(
            long,
            env = "STEPGATE_MAX_BUFFERED_REQUEST_BYTES",
            value_name = "BYTES"
        )]
        pub max_buffered_request_bytes: usize,
        /// Most gRPC calls not yet answered across all connections; past it calls get
        /// RESOURCE_EXHAUSTED at once [default: 1024].
        #[arg(long, env = "STEPGATE_MAX_CONCURRENT_CALLS", value_name = "N")]
        pub max_concurrent_calls: usize,
    }
}

/// The largest gRPC message and BatchCheck when nothing is configured.
pub(super) const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
pub(super) const MAX_BATCH: usize = 256;

/// The validated bounds: (largest message, most checks per batch, the listeners' limits).
pub(super) struct Transport {
    pub max_message_bytes: usize,
    pub max_batch: usize,
    pub limits: TransportLimits,
}

impl TransportArgs {
    /// The bounds, each problem pushed to `problems`.
    pub(super) fn resolve(self, problems: &mut Vec<String>) -> Transport {
        let defaults = TransportLimits::default();
        let max_message_bytes = positive(
            problems,
            "max_message_bytes",
            self.max_message_bytes,
            MAX_MESSAGE_BYTES,
        );
        let max_batch = positive(problems, "max_batch", self.max_batch, MAX_BATCH);
        let max_connections = positive(
            problems,
            "max_connections",
            self.max_connections,
            defaults.max_connections,
        );
        let max_concurrent_streams = positive(
            problems,
            "max_concurrent_streams",
            self.max_concurrent_streams,
            defaults.max_concurrent_streams as usize,
        );
        let max_concurrent_calls = positive(
            problems,
            "max_concurrent_calls",
            self.max_concurrent_calls,
            defaults.max_concurrent_calls,
        );
        let max_buffered_request_bytes = self
            .max_buffered_request_bytes
            .unwrap_or(defaults.max_buffered_request_bytes);
        if max_buffered_request_bytes < max_message_bytes {
            problems.push("max_buffered_request_bytes: must be at least max_message_bytes".into());
        }
        let mut duration =
            |name: &str, value: Option<String>, default| duration(problems, name, value, default);
        let limits = TransportLimits {
            max_connections,
            max_concurrent_streams: max_concurrent_streams.try_into().unwrap_or(u32::MAX),
            max_buffered_request_bytes,
            max_concurrent_calls,
            handshake_timeout: duration(
                "handshake_timeout",
                self.handshake_timeout,
                defaults.handshake_timeout,
            ),
            request_timeout: duration(
                "request_timeout",
                self.request_timeout,
                defaults.request_timeout,
            ),
            idle_timeout: duration("idle_timeout", self.idle_timeout, defaults.idle_timeout),
            keepalive_interval: duration(
                "keepalive_interval",
                self.keepalive_interval,
                defaults.keepalive_interval,
            ),
            keepalive_timeout: duration(
                "keepalive_timeout",
                self.keepalive_timeout,
                defaults.keepalive_timeout,
            ),
        };
        Transport {
            max_message_bytes,
            max_batch,
            limits,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{merge, merge_err};
    use super::*;

    #[test]
    fn transport_limits_come_from_flags_and_the_file() {
        let config = merge(&[], "");
        assert_eq!(config.transport, TransportLimits::default());
        assert_eq!(
            (config.max_message_bytes, config.max_batch),
            (MAX_MESSAGE_BYTES, MAX_BATCH)
        );
        let file = "max_concurrent_streams = 8\nhandshake_timeout = \"2s\"\nrequest_timeout = \"3s\"\nkeepalive_interval = \"15s\"\nkeepalive_timeout = \"5s\"\n";
        let transport =
            merge(&["--max-connections", "32", "--idle-timeout", "90s"], file).transport;
        assert_eq!(
            transport,
            TransportLimits {
                max_connections: 32,
                max_concurrent_streams: 8,
                handshake_timeout: Duration::from_secs(2),
                request_timeout: Duration::from_secs(3),
                idle_timeout: Duration::from_secs(90),
                keepalive_interval: Duration::from_secs(15),
                keepalive_timeout: Duration::from_secs(5),
                max_buffered_request_bytes: 64 * 1024 * 1024,
                max_concurrent_calls: 1024,
            }
        );
        let err = merge_err(
            &[
                "--max-connections",
                "0",
                "--idle-timeout",
                "never",
                "--max-buffered-request-bytes",
                "1000",
            ],
            "",
        );
        assert_eq!(err.0.len(), 3, "{err}");
    }
}
