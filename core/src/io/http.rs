//! Reading one HTTP/1.1 request (head and Content-Length body) from a socket, within
//! the handshake timeout and the header limits, and writing answers.

use super::transport::Transport;
use crate::handshake::{HandshakeError, HeadLimits, RequestHead};
use bytes::{Bytes, BytesMut};
use std::future::Future;
use std::time::Duration;

/// Limits on what a client may send before its request is understood.
#[derive(Debug, Clone)]
pub struct RequestLimits {
    /// Header bytes and count.
    pub head: HeadLimits,
    /// Largest accepted request body.
    pub max_body: usize,
    /// Time allowed for the whole request (head and body) to arrive.
    pub timeout: Duration,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            head: HeadLimits::default(),
            max_body: 64 * 1024,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Why no request could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadRequestError {
    /// The request broke HTTP or a limit; answer with its status.
    #[error("{0}")]
    Invalid(#[from] HandshakeError),
    /// The body is larger than allowed (413).
    #[error("request body of {0} bytes is over the limit")]
    BodyTooLarge(usize),
    /// The request did not arrive whole in time.
    #[error("request not complete within the handshake timeout")]
    Timeout,
    /// The peer closed before a whole request arrived.
    #[error("connection closed before the request was complete")]
    Closed,
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// A request read from a socket; the bytes after it stay in the caller's buffer.
#[derive(Debug)]
pub struct HttpRequest {
    /// The parsed head.
    pub head: RequestHead,
    /// The body (empty without Content-Length).
    pub body: Bytes,
}

/// Runs `fut`, or gives `None` once `dur` has passed.
pub async fn with_timeout<T>(dur: Duration, fut: impl Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        glommio::timer::sleep(dur).await;
        None
    })
    .await
}

/// Reads one request into `rbuf` and splits it off; leftover bytes stay in `rbuf`.
pub async fn read_request(
    transport: &mut Transport,
    rbuf: &mut BytesMut,
    limits: &RequestLimits,
) -> Result<HttpRequest, ReadRequestError> {
    match with_timeout(limits.timeout, read_request_inner(transport, rbuf, limits)).await {
        Some(result) => result,
        None => Err(ReadRequestError::Timeout),
    }
}

async fn read_request_inner(
    transport: &mut Transport,
    rbuf: &mut BytesMut,
    limits: &RequestLimits,
) -> Result<HttpRequest, ReadRequestError> {
    let head = loop {
        if let Some(head) = crate::handshake::parse_request_head(rbuf, &limits.head)? {
            break head;
        }
        if transport.read_into(rbuf).await? == 0 {
            return Err(ReadRequestError::Closed);
        }
    };
    let body_len = head.headers.content_length()?.unwrap_or(0);
    if body_len > limits.max_body {
        return Err(ReadRequestError::BodyTooLarge(body_len));
    }
    while rbuf.len() < head.head_len + body_len {
        if transport.read_into(rbuf).await? == 0 {
            return Err(ReadRequestError::Closed);
        }
    }
    let _ = rbuf.split_to(head.head_len);
    let body = rbuf.split_to(body_len).freeze();
    Ok(HttpRequest { head, body })
}
