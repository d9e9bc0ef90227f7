//! The fault suite (bin/tests/faults_*.rs): raw frames, peers that vanish, source
//! addresses, and the after-case health check every fault case ends with.

use super::*;

/// Growth of the relay's VmRSS over its warm baseline that still counts as "back near where
/// it started": the allocator keeps some freed pages, so a case that moved megabytes may
/// leave a few behind. A leak of per-connection state over hundreds of connections, or a
/// buffer that is never freed, shows above it.
pub const RSS_SLACK_KIB: u64 = 8 << 10;

/// Starts the relay for a fault case.
///
/// VmRSS tracks live memory closely enough for the after-case checks: the relay runs on
/// mimalloc, which hands freed pages back, and the 12 MiB of argon2 working memory every
/// login needs is taken once per shard before the relay says it is ready and reused
/// (core/src/auth/secrets.rs), instead of being allocated and freed per login (with
/// glibc's malloc, a burst of logins used to leave 100+ MiB of free-but-kept pages).
pub fn fault_relay(args: &[&str]) -> Relay {
    Relay::start(args)
}

/// The device every fault case provisions for its after-case check (a fresh pair).
pub const PROBE_TSN: &str = "99990000";

/// The mask key of every raw client frame (RFC 6455 §5.3: any 32-bit value).
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Opcodes (RFC 6455 §5.2).
pub mod op {
    /// Continuation.
    pub const CONT: u8 = 0x0;
    /// Text.
    pub const TEXT: u8 = 0x1;
    /// Binary.
    pub const BINARY: u8 = 0x2;
    /// Close.
    pub const CLOSE: u8 = 0x8;
    /// Ping.
    pub const PING: u8 = 0x9;
    /// Pong.
    pub const PONG: u8 = 0xA;
}

/// One frame as raw bytes: FIN, RSV bits (RSV1 = 0b100), opcode, optional mask key and the
/// payload, with the shortest length encoding (RFC 6455 §5.2).
pub fn client_frame(
    fin: bool,
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | ((rsv & 0b111) << 4) | (opcode & 0x0f)];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= 0xffff {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A masked, final frame (what a well-behaved client sends).
pub fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    client_frame(true, 0, opcode, Some(MASK), payload)
}

/// A masked close frame with `code` and `reason` bytes.
pub fn close_frame(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(reason);
    masked(op::CLOSE, &body)
}

/// A masked frame header that announces `len` in the 64-bit form, without any payload.
pub fn header_announcing(opcode: u8, len: u64) -> Vec<u8> {
    let mut out = vec![0x80 | opcode, 0x80 | 127];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&MASK);
    out
}

/// A frame read off the wire by [`RawWs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    /// FIN bit.
    pub fin: bool,
    /// Opcode.
    pub opcode: u8,
    /// Payload (unmasked).
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// The status code of a close frame (1005 when its body is empty).
    pub fn close_code(&self) -> Option<u16> {
        if self.opcode != op::CLOSE {
            return None;
        }
        match self.payload.get(..2) {
            Some(b) => Some(u16::from_be_bytes([b[0], b[1]])),
            None => Some(1005),
        }
    }
}

/// The path (and query) of an absolute `ws://host/path` URL.
pub fn url_path(url: &str) -> &str {
    let after_scheme = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    after_scheme
        .find('/')
        .map(|i| &after_scheme[i..])
        .unwrap_or("/")
}

/// A WebSocket client that writes exact bytes (masks, reserved bits, bad lengths) on a plain
/// TcpStream after doing the upgrade by hand, and parses what the relay sends.
pub struct RawWs {
    /// The socket.
    pub stream: TcpStream,
}

impl RawWs {
    /// Upgrades a fresh connection to `addr` on `path` with extra header lines; Err is the
    /// non-101 answer.
    pub fn upgrade(addr: SocketAddr, path: &str, extra: &[&str]) -> Result<RawWs, RawResp> {
        Self::upgrade_on(raw_connect(addr), path, extra)
    }

    /// Upgrades `stream` (already connected) on `path`.
    pub fn upgrade_on(mut stream: TcpStream, path: &str, extra: &[&str]) -> Result<RawWs, RawResp> {
        stream.set_nodelay(true).unwrap();
        stream
            .write_all(&upgrade_request(path, extra))
            .expect("write upgrade request");
        // read_head reads byte by byte, so no frame byte after the head is consumed.
        let resp = read_head(&mut stream);
        if resp.status == 101 {
            Ok(RawWs { stream })
        } else {
            Err(resp)
        }
    }

    /// Upgrades on `path_or_url` with `Authorization: Bearer <token>` (or none); panics
    /// unless the answer is 101.
    pub fn open(relay: &Relay, path_or_url: &str, token: Option<&str>) -> RawWs {
        let auth = token.map(|t| format!("Authorization: Bearer {t}"));
        let extra: Vec<&str> = auth.iter().map(|s| s.as_str()).collect();
        match RawWs::upgrade(relay.relay_addr, url_path(path_or_url), &extra) {
            Ok(ws) => ws,
            Err(resp) => relay.fail(&format!(
                "raw upgrade of {path_or_url} answered {}: {}",
                resp.status, resp.head
            )),
        }
    }

    /// Writes bytes; errors are returned (the relay may already have closed).
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads one frame. Ok(None) at a clean end of stream between frames; an error for a
    /// reset, a timeout or a stream that ends inside a frame.
    pub fn read_frame(&mut self) -> std::io::Result<Option<RawFrame>> {
        let mut head = [0u8; 2];
        match self.stream.read(&mut head[..1]) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(e),
        }
        self.stream.read_exact(&mut head[1..])?;
        let fin = head[0] & 0x80 != 0;
        let opcode = head[0] & 0x0f;
        let masked = head[1] & 0x80 != 0;
        let len = match head[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                self.stream.read_exact(&mut b)?;
                u16::from_be_bytes(b) as u64
            }
            127 => {
                let mut b = [0u8; 8];
                self.stream.read_exact(&mut b)?;
                u64::from_be_bytes(b)
            }
            n => n as u64,
        };
        if len > 256 << 20 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("frame of {len} bytes from the relay"),
            ));
        }
        let mut key = [0u8; 4];
        if masked {
            self.stream.read_exact(&mut key)?;
        }
        let mut payload = vec![0u8; len as usize];
        self.stream.read_exact(&mut payload)?;
        if masked {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= key[i % 4];
            }
        }
        Ok(Some(RawFrame {
            fin,
            opcode,
            payload,
        }))
    }

    /// Reads frames until a close frame (skipping pings, pongs and data) and returns its
    /// code; Err describes how the connection ended without one.
    pub fn close_code(&mut self) -> Result<u16, String> {
        loop {
            match self.read_frame() {
                Ok(Some(f)) if f.opcode == op::CLOSE => return Ok(f.close_code().unwrap_or(1005)),
                Ok(Some(_)) => continue,
                Ok(None) => return Err("end of stream without a close frame".into()),
                Err(e) => return Err(format!("{e} before a close frame")),
            }
        }
    }

    /// After the relay's close frame: the relay ends the TCP connection (EOF or reset)
    /// without sending anything else but frames. Panics if it stays open for IO_TIMEOUT.
    pub fn assert_ends(&mut self, what: &str) {
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
                Err(e) => panic!("{what}: the relay kept the connection open ({e})"),
            }
        }
    }
}

/// SO_LINGER 0: closing `stream` now sends a reset instead of a FIN (a peer that crashes or
/// whose network vanishes, as far as the relay can tell).
pub fn set_reset_on_close(stream: &TcpStream) {
    socket2::SockRef::from(stream)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
}

/// Kills a tungstenite peer the hard way: reset, no close frame.
pub fn reset_ws(mut ws: Ws) {
    set_reset_on_close(tcp_of(&mut ws));
    drop(ws);
}

/// Connects from source address `src` (any 127.0.0.0/8 address is local on Linux) to `dst`.
pub fn connect_from(src: std::net::IpAddr, dst: SocketAddr) -> TcpStream {
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.bind(&SocketAddr::new(src, 0).into())
        .unwrap_or_else(|e| panic!("bind {src}: {e}"));
    sock.connect_timeout(&dst.into(), IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect {src} -> {dst}: {e}"));
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// An IPv4 address of one of this machine's non-loopback interfaces, if it has one: a
/// connection bound to it and made to 127.0.0.1 never leaves the machine, yet the relay
/// sees a peer that is not on loopback ("another host", PROTOCOL.md §7c).
pub fn local_non_loopback_ipv4() -> Option<std::net::Ipv4Addr> {
    let mut found = None;
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list that we only read, then free once.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return None;
        }
        let mut cur = list;
        while !cur.is_null() {
            let addr = (*cur).ifa_addr;
            if !addr.is_null() && i32::from((*addr).sa_family) == libc::AF_INET {
                let sin = &*(addr as *const libc::sockaddr_in);
                let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !ip.is_loopback() && !ip.is_unspecified() && !ip.is_link_local() {
                    found = Some(ip);
                    break;
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(list);
    }
    found
}

/// A `POST /oauth2/v1/{domain}/token` (Basic credentials) from source address `src` on
/// its own connection; returns the head and the body text.
pub fn token_request_from(
    relay: &Relay,
    src: std::net::IpAddr,
    domain: &str,
    client_id: &str,
    secret: &str,
) -> (RawResp, String) {
    let body = "grant_type=client_credentials";
    let req = format!(
        "POST /oauth2/v1/{domain}/token HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        basic_auth(client_id, secret),
        body.len()
    );
    let mut s = connect_from(src, relay.relay_addr);
    s.write_all(req.as_bytes()).expect("write token request");
    let head = read_head(&mut s);
    let text = String::from_utf8_lossy(&read_body(&mut s, &head)).into_owned();
    (head, text)
}

/// A §2 registration from source address `src`: the reply and the close code after it.
pub fn register_from(
    relay: &Relay,
    src: std::net::IpAddr,
    tsn: &str,
    client_id: &str,
    secret: &str,
) -> (Value, u16) {
    let stream = connect_from(src, relay.relay_addr);
    let url = relay.ws_url(DEVICE_LISTENER);
    let (ws, _) = tungstenite::client(url.as_str(), MaybeTlsStream::Plain(stream))
        .unwrap_or_else(|e| panic!("registration upgrade from {src}: {e}"));
    let mut ws: Ws = ws;
    let msg =
        json!({"type": "register", "tsn": tsn, "client_id": client_id, "client_secret": secret});
    send_json(&mut ws, &msg);
    let reply = recv_json(&mut ws);
    let code = expect_close(&mut ws);
    (reply, code)
}

/// Sum of the samples of `name` whose labels include all of `labels` (0 when none).
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    parse_metrics(text)
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(|x| x.as_str()) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// Binary messages that carry a sequence number in their first 8 bytes and a fixed body
/// after it, so that loss, reordering and corruption are all visible.
#[derive(Clone)]
pub struct SeqFrames {
    body: Arc<Vec<u8>>,
}

impl SeqFrames {
    /// Messages of `len` (>= 8) bytes.
    pub fn new(len: usize) -> SeqFrames {
        assert!(len >= 8);
        SeqFrames {
            body: Arc::new(binary_payload(len, 0x5eed)),
        }
    }

    /// Message number `seq`.
    pub fn make(&self, seq: u64) -> Vec<u8> {
        let mut m = self.body.as_ref().clone();
        m[..8].copy_from_slice(&seq.to_be_bytes());
        m
    }

    /// The sequence number of `payload`, panicking unless the rest is byte-exact.
    pub fn check(&self, payload: &[u8]) -> u64 {
        assert_eq!(payload.len(), self.body.len(), "message length");
        assert!(payload[8..] == self.body[8..], "message body corrupted");
        u64::from_be_bytes(payload[..8].try_into().unwrap())
    }

    /// Length of each message.
    pub fn len(&self) -> usize {
        self.body.len()
    }
}

/// The after-case check of the fault suite: a fresh terminal/POS pair (on [`PROBE_TSN`])
/// completes an exchange, and the relay's VmRSS comes back near its warm baseline.
pub struct Health {
    domain: String,
    creds: Creds,
    /// VmRSS after warm-up, KiB.
    pub baseline_kib: u64,
}

impl Health {
    /// Runs three probe exchanges (so per-shard tables, caches and buffers exist) and then
    /// samples VmRSS. `creds` must be a client whose store holds [`PROBE_TSN`].
    pub fn warm_up(relay: &Relay, domain: &str, creds: &Creds) -> Health {
        for _ in 0..3 {
            probe_exchange(relay, domain, creds);
        }
        Health {
            domain: domain.to_string(),
            creds: creds.clone(),
            baseline_kib: relay.rss_kib(),
        }
    }

    /// A fresh pair completes an exchange; then every `posrelay_connections` gauge and
    /// `posrelay_open_connections` (admission slots) must come back to 0 (the case has dropped all its connections) and VmRSS within
    /// `baseline + slack_kib` (both polled for up to 10 s: closing is asynchronous).
    pub fn check(&self, relay: &Relay, what: &str, slack_kib: u64) {
        probe_exchange(relay, &self.domain, &self.creds);
        let mut open = Vec::new();
        let closed = wait_for(Duration::from_secs(10), || {
            open = parse_metrics(&relay.metrics())
                .into_iter()
                .filter(|s| {
                    (s.name == "posrelay_connections" || s.name == "posrelay_open_connections")
                        && s.value != 0.0
                })
                .map(|s| format!("{:?}={}", s.labels, s.value))
                .collect();
            open.is_empty().then_some(())
        });
        if closed.is_none() {
            relay.fail(&format!(
                "{what}: connections still counted open after the case: {open:?}"
            ));
        }
        let limit = self.baseline_kib + slack_kib;
        let mut last = 0;
        let ok = wait_for(Duration::from_secs(10), || {
            last = relay.rss_kib();
            (last <= limit).then_some(())
        });
        eprintln!(
            "{what}: relay VmRSS baseline {} KiB, after {last} KiB (slack {slack_kib} KiB)",
            self.baseline_kib
        );
        if ok.is_none() {
            relay.fail(&format!(
                "{what}: relay VmRSS {last} KiB did not come back within {slack_kib} KiB of \
                 its baseline {} KiB",
                self.baseline_kib
            ));
        }
    }
}

/// A fresh pair on [`PROBE_TSN`]: POS → device text, device → POS binary, then release and
/// clean closes.
pub fn probe_exchange(relay: &Relay, domain: &str, creds: &Creds) {
    let mut p = Pair::connect(relay, domain, PROBE_TSN, creds);
    let text = format!("probe {}", random_hex(4));
    send_text(&mut p.session, &text);
    match p.device.recv() {
        Message::Text(t) => assert_eq!(t, text, "probe: POS -> device"),
        other => panic!("probe: device got {}", show(&other)),
    }
    let bin = binary_payload(3000, 7);
    p.device.send_binary(&bin);
    match recv(&mut p.session) {
        Message::Binary(b) => assert!(b == bin, "probe: device -> POS"),
        other => panic!("probe: POS got {}", show(&other)),
    }
    let released = p.pos.release(PROBE_TSN);
    assert_eq!(released["type"], "released", "probe release: {released}");
    assert_eq!(
        expect_close(&mut p.session),
        4001,
        "probe: release closes the session"
    );
    close_and_wait(&mut p.pos.ws, 1000);
    close_and_wait(&mut p.device.ws, 1000);
}

/// Parses the whole frames at the start of `bytes` (what a peer's receive buffer held);
/// returns them and the number of bytes left over (a frame cut short).
pub fn parse_frames(bytes: &[u8]) -> (Vec<RawFrame>, usize) {
    let mut frames = Vec::new();
    let mut at = 0usize;
    loop {
        let rest = &bytes[at..];
        let (Some(&b0), Some(&b1)) = (rest.first(), rest.get(1)) else {
            break;
        };
        let masked = b1 & 0x80 != 0;
        let (len, mut off) = match b1 & 0x7f {
            126 => match rest.get(2..4) {
                Some(b) => (u16::from_be_bytes([b[0], b[1]]) as u64, 4usize),
                None => break,
            },
            127 => match rest.get(2..10) {
                Some(b) => (u64::from_be_bytes(b.try_into().unwrap()), 10usize),
                None => break,
            },
            n => (n as u64, 2usize),
        };
        let mut key = [0u8; 4];
        if masked {
            match rest.get(off..off + 4) {
                Some(k) => key.copy_from_slice(k),
                None => break,
            }
            off += 4;
        }
        let Some(end) = usize::try_from(len).ok().and_then(|l| off.checked_add(l)) else {
            break;
        };
        let Some(body) = rest.get(off..end) else {
            break;
        };
        let payload = body
            .iter()
            .enumerate()
            .map(|(i, b)| if masked { b ^ key[i % 4] } else { *b })
            .collect();
        frames.push(RawFrame {
            fin: b0 & 0x80 != 0,
            opcode: b0 & 0x0f,
            payload,
        });
        at += end;
    }
    (frames, bytes.len() - at)
}

impl RawWs {
    /// Everything the relay sent until it ended the connection (EOF or reset), read without
    /// ever writing; panics if it is still open after `limit`. Calls `tick` every ~50 ms
    /// meanwhile (to keep other connections alive).
    pub fn read_to_end(&mut self, limit: Duration, mut tick: impl FnMut()) -> Vec<u8> {
        let deadline = Instant::now() + limit;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        self.stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    assert!(
                        Instant::now() < deadline,
                        "the relay kept the connection open for {limit:?}"
                    );
                    tick();
                }
                Err(e) => panic!("reading to the end: {e}"),
            }
        }
        self.stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        got
    }
}

/// Bytes in `stream`'s send queue that the peer's TCP has not acknowledged yet (SIOCOUTQ).
pub fn unacked_bytes(stream: &TcpStream) -> usize {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ writes one c_int to the pointer, which points to a live local.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    assert_eq!(rc, 0, "ioctl(TIOCOUTQ)");
    n.max(0) as usize
}

/// Waits until everything written to `stream` has been acknowledged by the peer's TCP
/// (the relay's kernel holds it, whether or not the relay has read it yet).
pub fn wait_acked(stream: &TcpStream, limit: Duration) {
    let acked = wait_for(limit, || (unacked_bytes(stream) == 0).then_some(()));
    assert!(
        acked.is_some(),
        "{} bytes still unacknowledged after {limit:?}",
        unacked_bytes(stream)
    );
}
