//! Admin calls do not stall relaying (issue "Coordination as a sans-IO layer"): the admin
//! API hashes new client secrets (argon2) and writes the store durably, which takes
//! milliseconds per call in production; it runs on the shard's blocking pool, so the shard
//! that serves the admin listener keeps relaying meanwhile.
//!
//! The test makes each admin call slow on purpose (a secret-hashing cost hundreds of times
//! the production one), puts a burst of them in flight on a one-shard relay, and relays
//! messages meanwhile. What it asserts is an order of events, not a duration: every
//! relayed round trip completes while no admin call has answered yet. Had an admin call
//! run on the shard's own executor, the shard could not have relayed anything until that
//! call had answered, and its answer would already sit in the admin socket (loopback
//! delivers a write to the peer's buffer at once) when the round trips complete.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use posrelay_core::io::runtime::RuntimeConfig;
use posrelay_core::io::server::{run_server, ServerConfig, StopHandle};
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

const ADMIN: &str = "offload-admin-token";

/// About 20 times the production cost of one secret hash (12 MiB x 3 passes).
const SLOW: posrelay_core::auth::HashCost = posrelay_core::auth::HashCost {
    memory_kib: 12 * 1024,
    iterations: 60,
    parallelism: 1,
};

fn send_http(addr: SocketAddr, method: &str, path: &str, auth: &str, body: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    s
}

fn read_answer(mut s: TcpStream) -> (u16, String) {
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

fn http(addr: SocketAddr, method: &str, path: &str, auth: &str, body: &str) -> (u16, String) {
    read_answer(send_http(addr, method, path, auth, body))
}

fn field(json: &str, name: &str) -> String {
    let key = format!("\"{name}\":\"");
    let start = json
        .find(&key)
        .unwrap_or_else(|| panic!("{name} in {json}"))
        + key.len();
    json[start..start + json[start..].find('"').unwrap()].to_owned()
}

type Ws = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>;

fn connect(url: &str, bearer: Option<&str>) -> Ws {
    let mut req = url.into_client_request().unwrap();
    if let Some(t) = bearer {
        req.headers_mut()
            .insert("Authorization", format!("Bearer {t}").parse().unwrap());
    }
    let (ws, _) = tungstenite::connect(req).unwrap();
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    }
    ws
}

fn text(ws: &mut Ws) -> String {
    loop {
        match ws.read().unwrap() {
            Message::Text(t) => return t.to_string(),
            Message::Binary(_) => panic!("unexpected binary"),
            _ => {}
        }
    }
}

/// Whether an answer has arrived on `s` (without waiting for one).
fn answered(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let arrived = match s.peek(&mut byte) {
        Ok(n) => n > 0,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(e) => panic!("peek: {e}"),
    };
    s.set_nonblocking(false).unwrap();
    arrived
}

#[test]
fn relaying_on_the_admin_shard_continues_during_a_burst_of_admin_calls() {
    let dir = std::env::temp_dir().join(format!("posrelay-offload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.clone(),
        public_url: None,
        runtime: RuntimeConfig {
            shards: 1,
            pin: false,
            ..RuntimeConfig::default()
        },
        tls: None,
        subprotocols: Default::default(),
        relay_limits: Default::default(),
        ws_limits: Default::default(),
        head_limits: Default::default(),
        handshake_timeout: Duration::from_secs(60),
        ping_interval: Duration::from_secs(3600),
        idle_timeout: Duration::from_secs(3600),
        drain_timeout: Duration::from_secs(5),
        access_token_ttl: Duration::from_secs(3600),
        admin_token: Some(ADMIN.into()),
        send_queue_bytes: 256 * 1024,
        hash_cost: SLOW,
        admission: Default::default(),
    };
    let stop = StopHandle::default();
    let (tx, rx) = std::sync::mpsc::channel();
    let server_stop = stop.clone();
    let server = std::thread::spawn(move || {
        run_server(config, server_stop, move |a| tx.send(*a).unwrap()).unwrap();
    });
    let addrs = rx.recv_timeout(Duration::from_secs(60)).unwrap();
    let admin = format!("Bearer {ADMIN}");
    let created = |path: &str, body: &str| {
        let (status, answer) = http(addrs.admin, "POST", path, &admin, body);
        assert_eq!(status, 201, "{path}: {answer}");
        answer
    };
    created("/admin/v1/domains", r#"{"domain":"acme"}"#);
    created(
        "/admin/v1/domains/acme/stores",
        r#"{"store":"s1","merchant":"m1"}"#,
    );
    let client = created("/admin/v1/domains/acme/clients", r#"{"store":"s1"}"#);
    let (client_id, secret) = (field(&client, "client_id"), field(&client, "client_secret"));
    created(
        "/admin/v1/domains/acme/devices",
        r#"{"tsn":"10000000","make":"ingenico","model":"axium","store":"s1"}"#,
    );
    let relay = format!("ws://{}", addrs.relay);
    let form =
        format!("grant_type=client_credentials&client_id={client_id}&client_secret={secret}");
    let mut s = TcpStream::connect(addrs.relay).unwrap();
    write!(s, "POST /oauth2/v1/acme/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}", form.len()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let token = field(&answer, "access_token");
    let mut reg = connect(&format!("{relay}/cloud-connector/v1/device-listener"), None);
    reg.send(Message::text(format!(
        r#"{{"type":"register","tsn":"10000000","client_id":"{client_id}","client_secret":"{secret}"}}"#
    )))
    .unwrap();
    let registered = text(&mut reg);
    let mut device = connect(
        &field(&registered, "connection_url"),
        Some(&field(&registered, "token")),
    );
    let mut control = connect(
        &format!("{relay}/cloud-connector/v1/pos-listener"),
        Some(&token),
    );
    control
        .send(Message::text(r#"{"type":"claim","tsn":"10000000"}"#))
        .unwrap();
    let claimed = text(&mut control);
    let mut session = connect(&field(&claimed, "session_url"), Some(&token));

    // The burst: four slow admin calls (each hashes a new client's secret), in flight.
    let burst: Vec<TcpStream> = (0..4)
        .map(|_| {
            send_http(
                addrs.admin,
                "POST",
                "/admin/v1/domains/acme/clients",
                &admin,
                r#"{"store":"s1"}"#,
            )
        })
        .collect();
    // Meanwhile, the one shard relays: 20 round trips POS -> device -> POS.
    for i in 0..20 {
        let ping = format!("round trip {i}");
        session.send(Message::text(ping.clone())).unwrap();
        assert_eq!(text(&mut device), ping);
        device.send(Message::text(format!("answer {i}"))).unwrap();
        assert_eq!(text(&mut session), format!("answer {i}"));
    }
    let early: Vec<usize> = (0..burst.len()).filter(|&i| answered(&burst[i])).collect();
    assert!(
        early.is_empty(),
        "admin calls {early:?} answered before the relaying finished: they ran on the shard"
    );
    // Every admin call of the burst then answers, and succeeds.
    for s in burst {
        let (status, body) = read_answer(s);
        assert_eq!(status, 201, "{body}");
    }
    drop((device, session, control));
    stop.stop();
    server.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
