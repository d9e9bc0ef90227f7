//! How much heap a finished TLS 1.3 server session holds, three ways (BENCHMARKS.md,
//! "What an idle wss connection would hold outside rustls' connection"):
//!
//! 1. rustls' `UnbufferedServerConnection` after the handshake, as posrelay keeps it;
//! 2. rustls' `KernelConnection` (what `dangerous_into_kernel_connection` leaves: the key
//!    schedule for key updates) plus rustls' own record protection for each direction
//!    (`MessageEncrypter` / `MessageDecrypter` from the provider's AEAD), the state a
//!    record layer run outside rustls' connection would hold;
//! 3. the `KernelConnection` alone, as if the expanded AES keys were dropped while idle
//!    and only the traffic keys kept.
//!
//! Nothing here is used by the relay: it measures a design not taken (the record layer
//! would be ours, see BENCHMARKS.md). `cargo run -p posrelay-bench --release --example
//! tls_session_heap`. Heap is counted by a global allocator that counts only while the
//! server side runs, so the in-memory client's allocations are not included.

use rustls::unbuffered::{ConnectionState, UnbufferedStatus};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

/// Counts the bytes allocated and not freed while `COUNTING` is set on this thread.
struct Counting;
static NET: AtomicIsize = AtomicIsize::new(0);
thread_local! { static COUNTING: Cell<bool> = const { Cell::new(false) }; }

fn count(delta: isize) {
    if COUNTING.with(Cell::get) {
        NET.fetch_add(delta, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting touches
// only an atomic and a thread-local flag (neither allocates).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        // SAFETY: the caller's contract for `alloc` is passed on as it is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        // SAFETY: `ptr` was allocated by `System` with `layout` (every allocation is).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - layout.size() as isize);
        // SAFETY: as for `dealloc`; `new_size` comes from the caller's contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` with the server side's allocations counted.
fn counted<R>(f: impl FnOnce() -> R) -> R {
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    r
}

fn held() -> isize {
    NET.load(Ordering::Relaxed)
}

const SESSIONS: usize = 200;

fn main() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .expect("a self-signed certificate");
    let der = cert.cert.der().to_vec();
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.key_pair.serialize_der())
        .expect("the certificate's key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![der.clone().into()], key)
        .expect("the server certificate");
    // As posrelay's listener: stateless tickets (TLS 1.3 PSK resumption).
    server_config.ticketer = rustls::crypto::ring::Ticketer::new().expect("a ticketer");
    server_config.enable_secret_extraction = true;
    let server_config = Arc::new(server_config);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.into()).expect("the root");
    let client_config = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );

    let mut servers = Vec::with_capacity(SESSIONS);
    let mut clients = Vec::with_capacity(SESSIONS);
    let before = held();
    for _ in 0..SESSIONS {
        let name = "localhost".try_into().expect("a server name");
        let mut client = rustls::ClientConnection::new(client_config.clone(), name)
            .expect("a client connection");
        let mut server = counted(|| {
            rustls::server::UnbufferedServerConnection::new(server_config.clone())
                .expect("a server connection")
        });
        handshake(&mut client, &mut server);
        servers.push(server);
        clients.push(client);
    }
    let unbuffered = (held() - before) / SESSIONS as isize;
    let unbuffered_inline = std::mem::size_of::<rustls::server::UnbufferedServerConnection>();

    let mut kernels = Vec::with_capacity(SESSIONS);
    let mut secrets = Vec::with_capacity(SESSIONS);
    let before = held();
    for server in servers.drain(..) {
        counted(|| {
            let (extracted, kernel) = server
                .dangerous_into_kernel_connection()
                .expect("a finished handshake with nothing left to send");
            kernels.push(Box::new(kernel));
            secrets.push(extracted);
        });
    }
    // What the unbuffered connection held on the heap, less what converting it freed, plus
    // the boxed `KernelConnection` (inline, the unbuffered connection held no heap).
    let kernel = unbuffered + (held() - before) / SESSIONS as isize;

    let suite = kernels[0].negotiated_cipher_suite();
    let rustls::SupportedCipherSuite::Tls13(tls13) = suite else {
        panic!("TLS 1.3 expected, got {:?}", suite.suite());
    };
    // What waking an idle session would cost in route 3: expanding both keys again.
    let (key, iv) = aes_256_gcm(&secrets[0].tx.1);
    const EXPANSIONS: u32 = 100_000;
    let started = std::time::Instant::now();
    for _ in 0..EXPANSIONS {
        let pair = (
            tls13.aead_alg.encrypter(key.into(), iv.into()),
            tls13.aead_alg.decrypter(key.into(), iv.into()),
        );
        std::hint::black_box(pair);
    }
    let expand_ns = started.elapsed().as_nanos() / u128::from(EXPANSIONS);
    let mut ciphers = Vec::with_capacity(SESSIONS);
    let before = held();
    for extracted in secrets.drain(..) {
        counted(|| {
            let (tx_key, tx_iv) = aes_256_gcm(&extracted.tx.1);
            let (rx_key, rx_iv) = aes_256_gcm(&extracted.rx.1);
            ciphers.push((
                tls13.aead_alg.encrypter(tx_key.into(), tx_iv.into()),
                tls13.aead_alg.decrypter(rx_key.into(), rx_iv.into()),
            ));
        });
    }
    let cipher_pair = (held() - before) / SESSIONS as isize;
    drop(clients);

    println!(
        "{SESSIONS} TLS 1.3 sessions, {:?}, rustls with ring",
        suite.suite()
    );
    println!(
        "1. UnbufferedServerConnection after the handshake: {} bytes ({unbuffered} heap + {unbuffered_inline} inline)",
        unbuffered + unbuffered_inline as isize
    );
    println!(
        "2. KernelConnection (boxed) + MessageEncrypter + MessageDecrypter: {} bytes ({kernel} + {cipher_pair})",
        kernel + cipher_pair
    );
    println!("3. KernelConnection (boxed) alone: {kernel} bytes");
    println!("   expanding both AES-GCM keys again (route 3, per wake): {expand_ns} ns");
}

/// The key and IV of one direction (posrelay's first suite, AES-256-GCM, is what a
/// rustls client negotiates).
fn aes_256_gcm(secrets: &rustls::ConnectionTrafficSecrets) -> ([u8; 32], [u8; 12]) {
    match secrets {
        rustls::ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (
            key.as_ref().try_into().expect("a 32-byte key"),
            iv.as_ref().try_into().expect("a 12-byte IV"),
        ),
        _ => panic!("AES-256-GCM expected"),
    }
}

/// Drives `server` through the handshake with `client`, in memory, until the server can
/// send application data and has sent everything (its tickets included).
fn handshake(
    client: &mut rustls::ClientConnection,
    server: &mut rustls::server::UnbufferedServerConnection,
) {
    let mut incoming: Vec<u8> = Vec::new();
    let mut scratch = vec![0u8; 32 * 1024];
    loop {
        while client.wants_write() {
            client.write_tls(&mut incoming).expect("client output");
        }
        let mut to_client: Vec<u8> = Vec::new();
        let mut writable = false;
        counted(|| loop {
            let UnbufferedStatus { discard, state } = server.process_tls_records(&mut incoming);
            let mut waiting = false;
            match state.expect("a server handshake") {
                ConnectionState::EncodeTlsData(mut encode) => {
                    let n = encode.encode(&mut scratch).expect("room for a record");
                    to_client.extend_from_slice(&scratch[..n]);
                }
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                ConnectionState::WriteTraffic(_) => {
                    writable = true;
                    waiting = true;
                }
                _ => waiting = true,
            }
            incoming.drain(..discard);
            if waiting {
                break;
            }
        });
        let mut reader = &to_client[..];
        while !reader.is_empty() {
            client.read_tls(&mut reader).expect("client input");
        }
        client.process_new_packets().expect("the server's records");
        if writable && !client.is_handshaking() && !client.wants_write() {
            return;
        }
    }
}
