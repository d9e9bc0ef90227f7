//! Reading and writing WebSocket messages with tungstenite (every read has a timeout).

use super::*;

/// Next message other than ping/pong (those are hop-by-hop). Panics on error or timeout.
pub fn recv(ws: &mut Ws) -> Message {
    loop {
        match ws.read() {
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
            Ok(m) => return m,
            Err(e) => panic!("read failed: {}", describe_ws_error(&e)),
        }
    }
}

/// Next message including control frames (for tests of hop-by-hop behaviour).
pub fn recv_any(ws: &mut Ws) -> Message {
    match ws.read() {
        Ok(m) => m,
        Err(e) => panic!("read failed: {}", describe_ws_error(&e)),
    }
}

/// Next text message parsed as JSON.
pub fn recv_json(ws: &mut Ws) -> Value {
    match recv(ws) {
        Message::Text(t) => {
            serde_json::from_str(&t).unwrap_or_else(|e| panic!("not JSON ({e}): {t}"))
        }
        other => panic!("expected a JSON text message, got {}", show(&other)),
    }
}

/// Reads until a close frame; returns its code (1005 when the frame had none). Panics if
/// a data message arrives first or the connection ends without a close frame.
pub fn expect_close(ws: &mut Ws) -> u16 {
    loop {
        match ws.read() {
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
            Ok(Message::Close(Some(f))) => {
                let code: u16 = f.code.into();
                // Finish the closing handshake (tungstenite answers the close by itself).
                let _ = ws.flush();
                return code;
            }
            Ok(Message::Close(None)) => return 1005,
            Ok(other) => panic!("expected a close frame, got {}", show(&other)),
            Err(e) => panic!(
                "expected a close frame, got error: {}",
                describe_ws_error(&e)
            ),
        }
    }
}

/// Like [`expect_close`] but accepts data messages first, returning them too.
pub fn drain_until_close(ws: &mut Ws) -> (Vec<Message>, u16) {
    let mut got = Vec::new();
    loop {
        match ws.read() {
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
            Ok(Message::Close(Some(f))) => return (got, f.code.into()),
            Ok(Message::Close(None)) => return (got, 1005),
            Ok(m) => got.push(m),
            Err(e) => panic!(
                "expected a close frame, got error: {}",
                describe_ws_error(&e)
            ),
        }
    }
}

/// Waits up to `wait` for a message other than ping/pong; `None` if nothing came.
pub fn try_recv(ws: &mut Ws, wait: Duration) -> Option<Message> {
    set_read_timeout(ws, Some(wait));
    let result = loop {
        match ws.read() {
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
            Ok(m) => break Some(m),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break None
            }
            Err(e) => panic!("read failed: {}", describe_ws_error(&e)),
        }
    };
    set_read_timeout(ws, Some(IO_TIMEOUT));
    result
}

/// Waits up to `wait` for any message including ping/pong; `None` if nothing came.
pub fn try_recv_any(ws: &mut Ws, wait: Duration) -> Option<Message> {
    set_read_timeout(ws, Some(wait));
    let result = match ws.read() {
        Ok(m) => Some(m),
        Err(tungstenite::Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(e) => panic!("read failed: {}", describe_ws_error(&e)),
    };
    set_read_timeout(ws, Some(IO_TIMEOUT));
    result
}

/// Sets the read timeout of the socket under `ws`.
pub fn set_read_timeout(ws: &mut Ws, t: Option<Duration>) {
    tcp_of(ws).set_read_timeout(t).expect("set_read_timeout");
}

/// Sets the write timeout of the socket under `ws`.
pub fn set_write_timeout(ws: &mut Ws, t: Option<Duration>) {
    tcp_of(ws).set_write_timeout(t).expect("set_write_timeout");
}

/// The TCP stream under `ws`.
pub fn tcp_of(ws: &mut Ws) -> &TcpStream {
    match ws.get_ref() {
        MaybeTlsStream::Plain(s) => s,
        MaybeTlsStream::Rustls(s) => s.get_ref(),
        _ => panic!("unknown stream kind"),
    }
}

/// Sends a text message (flushes).
pub fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.to_string())).expect("send text");
}

/// Sends a binary message (flushes).
pub fn send_binary(ws: &mut Ws, data: &[u8]) {
    ws.send(Message::Binary(data.to_vec()))
        .expect("send binary");
}

/// Sends a JSON text message.
pub fn send_json(ws: &mut Ws, v: &Value) {
    send_text(ws, &v.to_string());
}

/// Starts the closing handshake with `code` and waits for the peer's close frame.
pub fn close_and_wait(ws: &mut Ws, code: u16) {
    ws.close(Some(tungstenite::protocol::CloseFrame {
        code: CloseCode::from(code),
        reason: "".into(),
    }))
    .expect("send close");
    loop {
        match ws.read() {
            Ok(Message::Close(_)) => continue,
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => return,
            Err(e) => panic!("closing handshake: {}", describe_ws_error(&e)),
        }
    }
}

/// Short description of a message for assertion messages.
pub fn show(m: &Message) -> String {
    match m {
        Message::Text(t) if t.len() <= 200 => format!("Text({t:?})"),
        Message::Text(t) => format!("Text({} bytes)", t.len()),
        Message::Binary(b) => format!("Binary({} bytes)", b.len()),
        Message::Ping(p) => format!("Ping({p:?})"),
        Message::Pong(p) => format!("Pong({p:?})"),
        Message::Close(c) => format!("Close({c:?})"),
        Message::Frame(_) => "Frame".into(),
    }
}

/// A readable description of a tungstenite error (including an HTTP answer's status).
pub fn describe_ws_error(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Http(resp) => format!(
            "HTTP {} {:?} body {:?}",
            resp.status(),
            resp.headers(),
            resp.body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
        ),
        other => other.to_string(),
    }
}
