//! Admin calls do not stall relaying (issue "Coordination as a sans-IO layer"): an admin
//! call writes the store durably (and, for a new client, hashes its secret), which takes
//! milliseconds; it runs on the shard's blocking pool, so the shard that serves the admin
//! listener keeps relaying meanwhile.
//!
//! The test runs a one-shard relay on a store whose client creations wait at a gate the
//! test holds closed. With a burst of admin calls stuck there, it relays messages through
//! the one shard, then opens the gate and checks that every call answers. What it asserts
//! is an order of events, not a duration: had an admin call run on the shard's own
//! executor, the shard could not relay anything while the call waits at the gate, and the
//! round trips would time out (the gate opens only after them).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use std::sync::{Arc, Condvar, Mutex};

use posrelay_core::ids::{ClientId, DomainName, Serial, StoreName};
use posrelay_core::io::runtime::RuntimeConfig;
use posrelay_core::io::server::{run_server, ServerConfig, StopHandle, StoreChoice};
use posrelay_core::store::{ClientRecord, DeviceRecord, MemStore, Store, StoreError, StoreRecord};
use posrelay_core::tenancy::{CertFingerprint, SecretHash};
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

const ADMIN: &str = "offload-admin-token";

/// A store whose client creations wait until the gate opens (everything else passes).
struct GatedStore {
    inner: MemStore,
    open: Mutex<bool>,
    opened: Condvar,
    waiting: Mutex<usize>,
    arrived: Condvar,
}

impl GatedStore {
    fn new(open: bool) -> Self {
        GatedStore {
            inner: MemStore::new(),
            open: Mutex::new(open),
            opened: Condvar::new(),
            waiting: Mutex::new(0),
            arrived: Condvar::new(),
        }
    }

    fn set_open(&self, open: bool) {
        *self.open.lock().unwrap() = open;
        self.opened.notify_all();
    }

    /// Waits until `n` client creations wait at the gate.
    fn await_waiting(&self, n: usize) {
        let mut waiting = self.waiting.lock().unwrap();
        while *waiting < n {
            let (w, timeout) = self
                .arrived
                .wait_timeout(waiting, Duration::from_secs(60))
                .unwrap();
            assert!(
                !timeout.timed_out(),
                "the admin calls never reached the store"
            );
            waiting = w;
        }
    }
}

impl Store for GatedStore {
    fn create_client(&self, record: &ClientRecord) -> Result<(), StoreError> {
        let mut open = self.open.lock().unwrap();
        if !*open {
            *self.waiting.lock().unwrap() += 1;
            self.arrived.notify_all();
            while !*open {
                open = self.opened.wait(open).unwrap();
            }
        }
        drop(open);
        self.inner.create_client(record)
    }
    fn create_domain(&self, domain: &DomainName) -> Result<(), StoreError> {
        self.inner.create_domain(domain)
    }
    fn domain_exists(&self, domain: &DomainName) -> Result<bool, StoreError> {
        self.inner.domain_exists(domain)
    }
    fn create_store(&self, record: &StoreRecord) -> Result<(), StoreError> {
        self.inner.create_store(record)
    }
    fn store_exists(&self, domain: &DomainName, store: &StoreName) -> Result<bool, StoreError> {
        self.inner.store_exists(domain, store)
    }
    fn delete_client(&self, domain: &DomainName, client_id: &ClientId) -> Result<(), StoreError> {
        self.inner.delete_client(domain, client_id)
    }
    fn replace_client_secret_hash(
        &self,
        domain: &DomainName,
        client_id: &ClientId,
        old: &SecretHash,
        new: &SecretHash,
    ) -> Result<bool, StoreError> {
        self.inner
            .replace_client_secret_hash(domain, client_id, old, new)
    }
    fn get_client(
        &self,
        domain: &DomainName,
        client_id: &ClientId,
    ) -> Result<Option<ClientRecord>, StoreError> {
        self.inner.get_client(domain, client_id)
    }
    fn find_client(&self, client_id: &ClientId) -> Result<Option<ClientRecord>, StoreError> {
        self.inner.find_client(client_id)
    }
    fn create_device(&self, record: &DeviceRecord) -> Result<(), StoreError> {
        self.inner.create_device(record)
    }
    fn set_device_enabled(
        &self,
        domain: &DomainName,
        serial: &Serial,
        enabled: bool,
    ) -> Result<DeviceRecord, StoreError> {
        self.inner.set_device_enabled(domain, serial, enabled)
    }
    fn get_device(
        &self,
        domain: &DomainName,
        serial: &Serial,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        self.inner.get_device(domain, serial)
    }
    fn list_devices(&self, domain: &DomainName) -> Result<Vec<DeviceRecord>, StoreError> {
        self.inner.list_devices(domain)
    }
    fn set_device_pins(
        &self,
        domain: &DomainName,
        serial: &Serial,
        pins: &[CertFingerprint],
    ) -> Result<DeviceRecord, StoreError> {
        self.inner.set_device_pins(domain, serial, pins)
    }
    fn find_device_by_fingerprint(
        &self,
        fingerprint: &CertFingerprint,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        self.inner.find_device_by_fingerprint(fingerprint)
    }
    fn list_domains(&self) -> Result<Vec<DomainName>, StoreError> {
        self.inner.list_domains()
    }
    fn delete_domain(&self, domain: &DomainName) -> Result<(), StoreError> {
        self.inner.delete_domain(domain)
    }
    fn list_stores(&self, domain: &DomainName) -> Result<Vec<StoreRecord>, StoreError> {
        self.inner.list_stores(domain)
    }
    fn delete_store(&self, domain: &DomainName, store: &StoreName) -> Result<(), StoreError> {
        self.inner.delete_store(domain, store)
    }
    fn list_clients(&self, domain: &DomainName) -> Result<Vec<ClientRecord>, StoreError> {
        self.inner.list_clients(domain)
    }
    fn rotate_client_secret(
        &self,
        domain: &DomainName,
        client_id: &ClientId,
        new: &SecretHash,
        old_valid_until: u64,
    ) -> Result<ClientRecord, StoreError> {
        self.inner
            .rotate_client_secret(domain, client_id, new, old_valid_until)
    }
    fn load_or_create_signing_key(&self, fresh: [u8; 32]) -> Result<[u8; 32], StoreError> {
        self.inner.load_or_create_signing_key(fresh)
    }
    fn load_or_create_session_key(&self, fresh: [u8; 32]) -> Result<[u8; 32], StoreError> {
        self.inner.load_or_create_session_key(fresh)
    }
}

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
    let store = Arc::new(GatedStore::new(true));
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.clone(),
        store: StoreChoice::Given(store.clone()),
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
        hash_cost: posrelay_core::auth::HashCost::TEST_ONLY,
        admission: Default::default(),
        device_mtls: None,
        reliable_window: posrelay_core::reliable::ReliableLimits::DEFAULT_WINDOW,
        cluster: None,
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

    // The burst: four admin calls, each stuck in the store until the gate opens.
    store.set_open(false);
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
    store.await_waiting(burst.len().min(1));
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
        "admin calls {early:?} answered through a closed gate"
    );
    // The gate opens: every admin call of the burst answers, and succeeds.
    store.set_open(true);
    for s in burst {
        let (status, body) = read_answer(s);
        assert_eq!(status, 201, "{body}");
    }
    drop((device, session, control));
    stop.stop();
    server.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
