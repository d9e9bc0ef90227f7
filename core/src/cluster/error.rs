//! The cluster layer's error: why a NATS call did not give an answer.

use std::time::Duration;

use crate::store::StoreError;

/// Why a call through the NATS bridge failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// The bridge's thread could not be started.
    #[error("cannot start the NATS thread: {0}")]
    Start(String),
    /// The bridge has stopped (the node is shutting down).
    #[error("the NATS bridge has stopped")]
    Stopped,
    /// No NATS server is connected right now; the bridge keeps trying the server list.
    #[error("not connected to NATS ({servers}); reconnecting in the background")]
    Disconnected {
        /// The configured server list.
        servers: String,
    },
    /// No answer within the request timeout: no quorum, or the server is gone. A write
    /// may still have been stored.
    #[error("no answer from NATS JetStream within {0:?} (no quorum, or the server is gone)")]
    Timeout(Duration),
    /// Nothing in JetStream answered for the subject: the stream has no leader (no
    /// quorum) or does not exist. Nothing was stored.
    #[error("no JetStream stream answered (no quorum of servers, or the stream is gone); nothing was stored")]
    NoResponders,
    /// A fenced write was refused: the subject's last sequence is not the one expected
    /// (`Nats-Expected-Last-Subject-Sequence`): someone else wrote first.
    #[error("refused: the subject's last sequence is not the one this write expected")]
    WrongLastSequence,
    /// Anything else JetStream answered.
    #[error("NATS JetStream: {0}")]
    JetStream(String),
}

impl ClusterError {
    /// The store error a failed cluster call becomes: `Unavailable` (503) when the cluster
    /// cannot answer, `Storage` (500) when it answered something unexpected.
    pub fn into_store_error(self) -> StoreError {
        match self {
            ClusterError::JetStream(reason) => StoreError::Storage { reason },
            other => StoreError::Unavailable {
                reason: other.to_string(),
            },
        }
    }

    /// A publish error, by kind.
    pub(crate) fn from_publish(
        err: async_nats::jetstream::context::PublishError,
        timeout: Duration,
    ) -> Self {
        use async_nats::jetstream::context::PublishErrorKind as K;
        use async_nats::jetstream::ErrorCode;
        // nats-server answers a failed `Nats-Expected-Last-Subject-Sequence` with 10071, or
        // with 10164 ("wrong last sequence", constant form) in some paths; async-nats names
        // only the first.
        let code = std::error::Error::source(&err)
            .and_then(|e| e.downcast_ref::<async_nats::jetstream::Error>())
            .map(|e| e.error_code());
        if code == Some(ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT) {
            return ClusterError::WrongLastSequence;
        }
        match err.kind() {
            K::WrongLastSequence => ClusterError::WrongLastSequence,
            K::TimedOut => ClusterError::Timeout(timeout),
            K::StreamNotFound => ClusterError::NoResponders,
            K::BrokenPipe => ClusterError::Disconnected {
                servers: "connection lost while waiting for the acknowledgement".into(),
            },
            _ => ClusterError::JetStream(err.to_string()),
        }
    }

    /// Any other JetStream or NATS error: a timeout says so, the rest is reported as is.
    pub(crate) fn other(err: impl std::fmt::Display, timeout: Duration) -> Self {
        let text = err.to_string();
        if text.contains("timed out") || text.contains("TimedOut") {
            ClusterError::Timeout(timeout)
        } else {
            ClusterError::JetStream(text)
        }
    }
}
