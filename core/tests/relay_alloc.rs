//! A warm relayed session forwards without allocating.
//!
//! 1. posrelay's own data path — decode (unmask in place), relay routing, outbox framing
//!    (fresh header + same payload bytes), the vectored write's bookkeeping — over
//!    100,000 frames: exactly zero allocations.
//! 2. The same through a real relay node on glommio, 100,000 messages POS → device →
//!    POS, counting every allocation on the shard thread. glommio 0.9's reactor allocates
//!    when the executor parks and wakes (poll sources, preemption timers, its timer map):
//!    the test prints the count and asserts that it is only that, i.e. under one
//!    allocation per message when messages are pipelined.
//! 3. Idle connections: the heap a relay node's shard holds per idle connection (a
//!    device connection or a POS session with nothing to say), counted byte by byte on
//!    the shard thread: at most 1,792 bytes, so that the resident memory the benchmark's
//!    `idle` scenario reads (requested bytes plus the allocator's rounding) stays under
//!    its 2 KiB goal. The same over wss (issue 12): what TLS adds per idle connection is
//!    rustls' session state, never a buffer.
//!
//! Its own test binary, so that its global allocator counts nothing else.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use posrelay_core::io::runtime::RuntimeConfig;
use posrelay_core::io::server::{run_server, ServerConfig, StopHandle};
use tungstenite::{client::IntoClientRequest, Message};

thread_local! {
    static ON_SHARD: Cell<bool> = const { Cell::new(false) };
    /// Which idle test's shard this thread is (0: none, 1: ws, 2: wss).
    static IDLE_SHARD: Cell<usize> = const { Cell::new(0) };
    static ON_TEST_THREAD: Cell<u64> = const { Cell::new(0) };
    static COUNT_TEST_THREAD: Cell<bool> = const { Cell::new(false) };
}

static SHARD_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
/// Bytes allocated and not yet freed on each idle test's shard thread (ws, wss).
static IDLE_SHARD_LIVE: [AtomicI64; 2] = [AtomicI64::new(0), AtomicI64::new(0)];

fn track_live(delta: i64) {
    let which = IDLE_SHARD.with(|c| c.get());
    if which > 0 {
        IDLE_SHARD_LIVE[which - 1].fetch_add(delta, Ordering::Relaxed);
    }
}

fn count_here() {
    if COUNT_TEST_THREAD.with(|c| c.get()) {
        ON_TEST_THREAD.with(|c| c.set(c.get() + 1));
    }
}

struct Counting;

// SAFETY: forwards to the system allocator unchanged; only counts.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ON_SHARD.with(|c| c.get()) {
            SHARD_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        count_here();
        track_live(layout.size() as i64);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track_live(-(layout.size() as i64));
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ON_SHARD.with(|c| c.get()) {
            SHARD_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        count_here();
        track_live(new_size as i64 - layout.size() as i64);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn mark_shard_thread() {
    ON_SHARD.with(|c| c.set(true));
}

fn mark_idle_shard_thread() {
    IDLE_SHARD.with(|c| c.set(1));
}

fn mark_idle_tls_shard_thread() {
    IDLE_SHARD.with(|c| c.set(2));
}

const ADMIN: &str = "alloc-test-admin-token";

#[test]
fn the_data_path_allocates_nothing_per_frame() {
    use bytes::BytesMut;
    use posrelay_core::ids::{ClientId, ClientKey, DeviceKey, DomainName, Serial};
    use posrelay_core::io::outbox::Outbox;
    use posrelay_core::proto::{encode_client_frame, Connection, Event, Limits, OpCode, Role};
    use posrelay_core::relay::{ConnId, DeviceShard, RelayLimits, Route, SessionKeyring};
    use std::time::Instant;

    let now = Instant::now();
    let mut shard: DeviceShard<posrelay_core::proto::Message> =
        DeviceShard::new(SessionKeyring::new([7; 32]), RelayLimits::default());
    let device = DeviceKey {
        domain: DomainName::new("acme").unwrap(),
        serial: Serial::new("12345678").unwrap(),
    };
    let client = ClientKey {
        domain: DomainName::new("acme").unwrap(),
        client_id: ClientId::new("pos1").unwrap(),
    };
    let (device_conn, pos_conn) = (ConnId(1), ConnId(2));
    let sid = shard.handle_register(device.clone(), now);
    shard
        .handle_device_connected(&sid, device_conn, now)
        .unwrap();
    shard.handle_claim(&client, &device, now).unwrap();
    shard
        .handle_pos_session_opened(&sid, &client, pos_conn, now)
        .unwrap();
    while shard.poll_action().is_some() {}

    // What the POS sends: masked 64-byte binary frames, 64 per socket read.
    let mut wire = BytesMut::new();
    for i in 0..64u8 {
        encode_client_frame(OpCode::Binary, true, &[i; 64], [1, 2, 3, 4], &mut wire);
    }
    let mut pos = Connection::new(Role::Server, Limits::default());
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let outbox = Outbox::new(1 << 20);
    let mut forwarded = 0u64;
    let mut written = 0usize;
    let mut run = |frames: u64, forwarded: &mut u64, written: &mut usize| {
        while *forwarded < frames {
            // A socket read: bytes land in the read buffer's spare capacity.
            rbuf.reserve(wire.len());
            rbuf.extend_from_slice(&wire);
            while let Some(event) = pos.handle_read(&mut rbuf).unwrap() {
                let Event::Message(message) = event else {
                    continue;
                };
                match shard.handle_message_from_pos(&sid, pos_conn, message, now) {
                    Route::Forward { conn, message } => {
                        assert_eq!(conn, device_conn);
                        outbox
                            .borrow_mut()
                            .push_message(&message, Some(now))
                            .unwrap();
                    }
                    other => panic!("not forwarded: {other:?}"),
                }
                *forwarded += 1;
            }
            // The socket takes everything: the vectored write's bookkeeping.
            let mut ob = outbox.borrow_mut();
            while !ob.is_empty() {
                let mut slices = [std::io::IoSlice::new(&[]); 32];
                let n = ob.gather(&mut slices);
                let len: usize = slices[..n].iter().map(|s| s.len()).sum();
                *written += len;
                ob.advance(len);
            }
        }
    };
    run(2_000, &mut forwarded, &mut written);
    let warm = forwarded;
    COUNT_TEST_THREAD.with(|c| c.set(true));
    run(warm + 100_000, &mut forwarded, &mut written);
    COUNT_TEST_THREAD.with(|c| c.set(false));
    let allocations = ON_TEST_THREAD.with(|c| c.get());
    let measured = forwarded - warm;
    println!("data path: {measured} frames forwarded, {written} bytes written, {allocations} allocations");
    assert!(measured >= 100_000);
    // Every frame went out whole: a 2-byte server header plus its 64 payload bytes.
    assert_eq!(written as u64, forwarded * 66);
    assert_eq!(allocations, 0, "posrelay's data path allocated");
}

fn http(addr: SocketAddr, method: &str, path: &str, auth: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
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

/// Opens a WebSocket to `url` (`ws://`, or `wss://` trusting only `tls`'s certificate).
fn connect(url: &str, bearer: Option<&str>, tls: Option<&Arc<rustls::ClientConfig>>) -> Ws {
    let mut req = url.into_client_request().unwrap();
    if let Some(t) = bearer {
        req.headers_mut()
            .insert("Authorization", format!("Bearer {t}").parse().unwrap());
    }
    let host = req.uri().host().unwrap().to_owned();
    let port = req.uri().port_u16().unwrap();
    let stream = TcpStream::connect((host.as_str(), port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    let connector = match tls {
        Some(config) => tungstenite::Connector::Rustls(config.clone()),
        None => tungstenite::Connector::Plain,
    };
    let (ws, _) = tungstenite::client_tls_with_config(req, stream, None, Some(connector)).unwrap();
    ws
}

/// A client TLS configuration that trusts exactly `cert_der`.
fn trusting(cert_der: Vec<u8>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der.into()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
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

/// A one-shard relay node on a fresh data directory, `devices` terminals provisioned
/// (serials 10000000, 10000001, ...), and a POS access token.
struct Node {
    dir: std::path::PathBuf,
    stop: StopHandle,
    server: std::thread::JoinHandle<()>,
    relay: String,
    client_id: String,
    secret: String,
    token: String,
    /// For a wss node: the clients' TLS configuration.
    tls: Option<Arc<rustls::ClientConfig>>,
}

fn start_node(name: &str, on_shard_start: fn(), devices: usize, tls: bool) -> Node {
    let dir = std::env::temp_dir().join(format!("posrelay-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (server_tls, client_tls) = if tls {
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
        (
            Some((cert_path, key_path)),
            Some(trusting(cert.cert.der().to_vec())),
        )
    } else {
        (None, None)
    };
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.clone(),
        store: Default::default(),
        public_url: None,
        runtime: RuntimeConfig {
            shards: 1,
            pin: false,
            on_shard_start: Some(on_shard_start),
            ..RuntimeConfig::default()
        },
        tls: server_tls,
        subprotocols: Default::default(),
        relay_limits: Default::default(),
        ws_limits: Default::default(),
        head_limits: Default::default(),
        handshake_timeout: Duration::from_secs(10),
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
    let addrs = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    let admin = format!("Bearer {ADMIN}");
    assert_eq!(
        http(
            addrs.admin,
            "POST",
            "/admin/v1/domains",
            &admin,
            r#"{"domain":"acme"}"#
        )
        .0,
        201
    );
    assert_eq!(
        http(
            addrs.admin,
            "POST",
            "/admin/v1/domains/acme/stores",
            &admin,
            r#"{"store":"s1","merchant":"m1"}"#
        )
        .0,
        201
    );
    let (_, client) = http(
        addrs.admin,
        "POST",
        "/admin/v1/domains/acme/clients",
        &admin,
        r#"{"store":"s1"}"#,
    );
    let (client_id, secret) = (field(&client, "client_id"), field(&client, "client_secret"));
    for n in 0..devices {
        let body = format!(
            r#"{{"tsn":"{}","make":"ingenico","model":"axium","store":"s1"}}"#,
            10_000_000 + n
        );
        let (status, _) = http(
            addrs.admin,
            "POST",
            "/admin/v1/domains/acme/devices",
            &admin,
            &body,
        );
        assert_eq!(status, 201);
    }
    let form =
        format!("grant_type=client_credentials&client_id={client_id}&client_secret={secret}");
    let request = format!("POST /oauth2/v1/acme/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}", form.len());
    let s = TcpStream::connect(addrs.relay).unwrap();
    let mut answer = String::new();
    match &client_tls {
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
            let mut s = rustls::StreamOwned::new(conn, s);
            s.write_all(request.as_bytes()).unwrap();
            s.read_to_string(&mut answer).unwrap();
        }
        None => {
            let mut s = s;
            s.write_all(request.as_bytes()).unwrap();
            s.read_to_string(&mut answer).unwrap();
        }
    }
    let token = field(&answer, "access_token");
    let scheme = if client_tls.is_some() { "wss" } else { "ws" };
    Node {
        dir,
        stop,
        server,
        relay: format!("{scheme}://{}", addrs.relay),
        client_id,
        secret,
        token,
        tls: client_tls,
    }
}

impl Node {
    /// Registers terminal `n` and opens its device connection (§2, §3).
    fn device(&self, n: usize) -> Ws {
        let mut reg = self.connect(
            &format!("{}/cloud-connector/v1/device-listener", self.relay),
            None,
        );
        reg.send(Message::text(format!(
            r#"{{"type":"register","tsn":"{}","client_id":"{}","client_secret":"{}"}}"#,
            10_000_000 + n,
            self.client_id,
            self.secret
        )))
        .unwrap();
        let registered = text(&mut reg);
        self.connect(
            &field(&registered, "connection_url"),
            Some(&field(&registered, "token")),
        )
    }

    /// Claims terminal `n` on `control` and opens its POS session (§4, §5).
    fn session(&self, control: &mut Ws, n: usize) -> Ws {
        control
            .send(Message::text(format!(
                r#"{{"type":"claim","tsn":"{}"}}"#,
                10_000_000 + n
            )))
            .unwrap();
        let claimed = text(control);
        self.connect(&field(&claimed, "session_url"), Some(&self.token))
    }

    fn connect(&self, url: &str, bearer: Option<&str>) -> Ws {
        connect(url, bearer, self.tls.as_ref())
    }

    fn control(&self) -> Ws {
        self.connect(
            &format!("{}/cloud-connector/v1/pos-listener", self.relay),
            Some(&self.token),
        )
    }

    fn stop(self) {
        self.stop.stop();
        self.server.join().unwrap();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_relay_node_forwards_without_per_message_allocations() {
    let node = start_node("alloc", mark_shard_thread, 1, false);
    let mut device = node.device(0);
    let mut control = node.control();
    let mut pos = node.session(&mut control, 0);
    // The terminal echoes every message.
    let echo = std::thread::spawn(move || loop {
        match device.read() {
            Ok(Message::Binary(b)) => device.send(Message::Binary(b)).unwrap(),
            Ok(Message::Close(_)) | Err(_) => return,
            Ok(_) => {}
        }
    });
    // The POS keeps WINDOW messages in flight (ROUND_TRIPS is a multiple of it); each
    // carries its sequence number.
    const WINDOW: u64 = 128;
    let mut next_reply = 0u64;
    let mut exchange = |pos: &mut Ws, count: u64, seq: &mut u64| {
        let end = *seq + count;
        while *seq < end {
            for i in 0..WINDOW {
                let mut payload = vec![0x5au8; 64];
                payload[..8].copy_from_slice(&(*seq + i).to_be_bytes());
                pos.send(Message::binary(payload)).unwrap();
            }
            let mut got = 0;
            while got < WINDOW {
                if let Message::Binary(b) = pos.read().unwrap() {
                    let n = u64::from_be_bytes(b[..8].try_into().unwrap());
                    assert_eq!(n, next_reply, "replies in order");
                    next_reply += 1;
                    got += 1;
                }
            }
            *seq += WINDOW;
        }
    };
    let mut seq = 0u64;
    exchange(&mut pos, 2_048, &mut seq);
    let before = SHARD_ALLOCATIONS.load(Ordering::Relaxed);
    const ROUND_TRIPS: u64 = 50_048;
    exchange(&mut pos, ROUND_TRIPS, &mut seq);
    let allocations = SHARD_ALLOCATIONS.load(Ordering::Relaxed) - before;
    let forwarded = 2 * ROUND_TRIPS;
    println!(
        "relay node: {forwarded} messages forwarded on a warm session, {allocations} allocations on the shard thread ({:.3} per message, all in glommio's reactor when it parks)",
        allocations as f64 / forwarded as f64
    );
    let _ = pos.close(None);
    let _ = control.close(None);
    node.stop();
    let _ = echo.join();
    // A per-message allocation anywhere on the path would give at least one per message
    // on top of glommio's (0.2-0.6 per message here, depending on how often the executor
    // parks: its main ring posts completions at the next system call since the
    // COOP_TASKRUN patch, see vendor/glommio/POSRELAY-PATCH.md).
    assert!(
        allocations < forwarded,
        "{allocations} allocations for {forwarded} messages: something allocates per message"
    );
}

/// Opens WARM pairs first (the shard's maps, pools and first-use state), then MEASURED
/// pairs, each a device connection and a POS session left idle, on a node whose shard
/// counts its live heap in `IDLE_SHARD_LIVE[slot]`; returns the heap bytes the measured
/// pairs hold per connection, after checking that every pair still relays.
fn idle_heap_per_connection(name: &str, mark: fn(), slot: usize, tls: bool) -> i64 {
    const WARM: usize = 16;
    const MEASURED: usize = 200;
    let node = start_node(name, mark, WARM + MEASURED, tls);
    let mut control = node.control();
    let mut pairs = Vec::new();
    let open = |control: &mut Ws, n: usize| (node.device(n), node.session(control, n));
    for n in 0..WARM {
        pairs.push(open(&mut control, n));
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = IDLE_SHARD_LIVE[slot].load(Ordering::Relaxed);
    for n in WARM..WARM + MEASURED {
        pairs.push(open(&mut control, n));
    }
    // Let the registrations' and handshakes' transient state go.
    std::thread::sleep(Duration::from_millis(300));
    let after = IDLE_SHARD_LIVE[slot].load(Ordering::Relaxed);
    let connections = 2 * MEASURED as i64;
    let per_connection = (after - before) / connections;
    println!(
        "idle ({name}): {MEASURED} pairs held {} bytes of heap on the shard: {per_connection} bytes per connection",
        after - before
    );
    // Every pair still relays: one message each way.
    for (n, (device, pos)) in pairs.iter_mut().enumerate() {
        let payload = format!("hello {n}");
        pos.send(Message::text(payload.clone())).unwrap();
        assert_eq!(text(device), payload);
        device.send(Message::text(payload.clone())).unwrap();
        assert_eq!(text(pos), payload);
    }
    drop(pairs);
    let _ = control.close(None);
    node.stop();
    per_connection
}

#[test]
fn a_relay_node_holds_at_most_1792_heap_bytes_per_idle_connection() {
    let per_connection = idle_heap_per_connection("idle-memory", mark_idle_shard_thread, 0, false);
    // The goal (issue 7) is 2 KiB of resident memory per idle connection, as the bench's
    // idle scenario reads it from /proc. This counts the bytes requested; the allocator's
    // size classes and partly used pages add to that (1,574 requested here against
    // 1,700-2,100 resident per connection in the bench before the last trims), so the bound
    // keeps that margin: it fails before the resident figure would.
    assert!(
        per_connection <= 1_792,
        "{per_connection} bytes of heap per idle connection (bound 1,792, for a resident goal of 2 KiB)"
    );
}

/// Issue 12: an idle wss connection costs what an idle ws connection costs plus the
/// cipher state, with no TLS buffer held while idle (rustls' unbuffered connection, the
/// ciphertext buffers pooled per shard). 5,037 bytes measured (ws: 1,574; before, with
/// rustls' buffered connection and its buffers, 9.6-12.4 KiB resident per connection in
/// the bench). What TLS adds is rustls' and ring's state for one TLS 1.3 session, none
/// of it a buffer: the connection object itself (1,272 bytes with the socket: rustls'
/// `UnbufferedServerConnection` is 1,088 inline; 1,288 before, which took mimalloc's
/// 1,536-byte size class), two AES-GCM keys (560 bytes
/// each: ring's key is sized for the AES key schedule plus the GHASH table, whatever
/// the cipher), the TLS 1.3 traffic state (640: its key schedule), and a few small
/// vectors. The issue's goal of 4 KiB resident is out of reach with that state (see
/// BENCHMARKS.md); this bound guards what is reached, with the same kind of margin as the
/// ws bound, so that a buffer kept per idle connection (16 KiB or more) fails it.
#[test]
fn a_relay_node_holds_at_most_5376_heap_bytes_per_idle_wss_connection() {
    let per_connection =
        idle_heap_per_connection("idle-memory-tls", mark_idle_tls_shard_thread, 1, true);
    assert!(
        per_connection <= 5_376,
        "{per_connection} bytes of heap per idle wss connection (bound 5,376)"
    );
}
