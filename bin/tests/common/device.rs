//! Devices: §2 registration and the §3 device connection.

use super::*;

/// A successful §2 registration reply.
#[derive(Debug, Clone)]
pub struct Registration {
    /// `session_id`.
    pub session_id: String,
    /// `connection_url`.
    pub connection_url: String,
    /// `token` (device token).
    pub token: String,
    /// `expires_in`.
    pub expires_in: i64,
    /// The whole reply.
    pub raw: Value,
}

/// Sends one registration message on a fresh device-listener connection; returns the reply
/// and the close code that followed it.
pub fn register_raw(relay: &Relay, message: &str) -> (Value, u16) {
    let mut ws = relay.ws(&relay.ws_url(DEVICE_LISTENER), &[]);
    send_text(&mut ws, message);
    let reply = recv_json(&mut ws);
    let code = expect_close(&mut ws);
    (reply, code)
}

/// §2 registration that must succeed: checks the reply shape and the 1000 close.
pub fn register(relay: &Relay, tsn: &str, creds: &Creds) -> Registration {
    let msg = json!({
        "type": "register",
        "tsn": tsn,
        "client_id": creds.client_id,
        "client_secret": creds.client_secret,
    });
    let (reply, code) = register_raw(relay, &msg.to_string());
    assert_eq!(reply["type"], "registered", "registration reply: {reply}");
    assert_eq!(code, 1000, "registration is followed by close 1000 (§2)");
    let session_id = reply["session_id"]
        .as_str()
        .expect("session_id")
        .to_string();
    assert_session_id_shape(&session_id);
    Registration {
        connection_url: reply["connection_url"]
            .as_str()
            .expect("connection_url")
            .to_string(),
        token: reply["token"].as_str().expect("token").to_string(),
        expires_in: reply["expires_in"].as_i64().expect("expires_in integer"),
        session_id,
        raw: reply,
    }
}

/// §0: a session id is URL-safe and carries at least 128 bits (≥ 22 base64url characters).
pub fn assert_session_id_shape(id: &str) {
    assert!(
        id.len() >= 22
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "session_id {id:?} is not URL-safe with >= 128 bits"
    );
}

/// A connected device (§3).
pub struct Device {
    /// The device-connection WebSocket.
    pub ws: Ws,
    /// The registration it connected with.
    pub reg: Registration,
}

impl Device {
    /// §2 then §3.
    pub fn register_and_connect(relay: &Relay, tsn: &str, creds: &Creds) -> Device {
        let reg = register(relay, tsn, creds);
        Device::connect(relay, reg)
    }

    /// §3 with a registration already done.
    pub fn connect(relay: &Relay, reg: Registration) -> Device {
        let ws = relay.ws_bearer(&reg.connection_url, &reg.token);
        Device { ws, reg }
    }

    /// Sends text.
    pub fn send_text(&mut self, t: &str) {
        send_text(&mut self.ws, t)
    }

    /// Sends binary.
    pub fn send_binary(&mut self, b: &[u8]) {
        send_binary(&mut self.ws, b)
    }

    /// Next data message.
    pub fn recv(&mut self) -> Message {
        recv(&mut self.ws)
    }
}
