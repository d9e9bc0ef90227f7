//! Thread per core: one glommio executor per shard, each with its own listener on the
//! same port (SO_REUSEPORT), nothing shared and mutable between them.

use glommio::{LocalExecutorPoolBuilder, PoolPlacement};
use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};

/// Which shard (executor) a piece of state or a connection belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShardIndex(pub usize);

/// How the executors are laid out.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Number of executors (shards), at least 1.
    pub shards: usize,
    /// glommio's registered io memory per shard (locked memory: see [`check_memlock`]).
    /// posrelay does no DMA file I/O, the only use glommio makes of it, so the default
    /// is glommio's floor ([`MIN_IO_MEMORY`]).
    pub io_memory: usize,
    /// Pin each shard to its own CPU (MaxSpread) when there are enough CPUs.
    pub pin: bool,
    /// Run on each shard's thread before it starts serving (tests mark shard threads).
    pub on_shard_start: Option<fn()>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            shards: available_cores(),
            io_memory: MIN_IO_MEMORY,
            pin: true,
            on_shard_start: None,
        }
    }
}

/// glommio's smallest registered io memory per shard (it rounds anything below up).
pub const MIN_IO_MEMORY: usize = 64 * 1024;

/// glommio refuses to set up an executor when the soft `RLIMIT_MEMLOCK` is below this
/// (`Reactor::new` in vendor/glommio/src/sys/uring.rs), whatever it will use.
pub const GLOMMIO_MIN_MEMLOCK: u64 = 512 * 1024;

/// Locked memory of one shard's three io_uring rings (main, latency, poll) at glommio's
/// ring depth of 128: submission entries, completion entries and ring headers, rounded
/// up to pages. Kernels before 5.12 charge them to `RLIMIT_MEMLOCK`; later ones to the
/// memory cgroup.
pub const RING_BYTES_PER_SHARD: u64 = 3 * 16 * 1024;

/// Locked memory the shards of `config` take: each shard's registered io memory and
/// rings, and never less than glommio's own floor.
pub fn memlock_need(config: &RuntimeConfig) -> u64 {
    let io_memory = config.io_memory.max(MIN_IO_MEMORY).next_multiple_of(4096) as u64;
    let shards = config.shards.max(1) as u64;
    (shards * (io_memory + RING_BYTES_PER_SHARD)).max(GLOMMIO_MIN_MEMLOCK)
}

/// The shards need more locked memory than `RLIMIT_MEMLOCK` allows: found before any
/// shard starts or anything is bound, so that nothing is announced that cannot serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemlockShortfall {
    /// The soft limit in force, bytes.
    pub soft: u64,
    /// The hard limit in force (only root raises the soft limit above it), bytes.
    pub hard: u64,
    /// What the shards need, bytes.
    pub need: u64,
    /// How many shards.
    pub shards: usize,
}

impl std::fmt::Display for MemlockShortfall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kib = |b: u64| b.div_ceil(1024);
        write!(
            f,
            "the locked-memory limit (RLIMIT_MEMLOCK) is {} KiB, but {} shard(s) need {} KiB \
             (glommio's io_uring rings and buffers; glommio refuses to start below {} KiB): \
             raise it with `ulimit -l {}` (or more, or unlimited) in the shell that starts \
             posrelay, `LimitMEMLOCK=infinity` in its systemd unit, or a memlock line in \
             /etc/security/limits.conf; or run fewer shards (--shards)",
            kib(self.soft),
            self.shards,
            kib(self.need),
            kib(GLOMMIO_MIN_MEMLOCK),
            kib(self.need),
        )?;
        if self.hard < self.need {
            write!(
                f,
                "; the hard limit is {} KiB, so only root can raise it",
                kib(self.hard)
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for MemlockShortfall {}

/// Whether `soft`/`hard` (`RLIMIT_MEMLOCK`) let the shards of `config` start.
pub fn memlock_fits(config: &RuntimeConfig, soft: u64, hard: u64) -> Result<(), MemlockShortfall> {
    let need = memlock_need(config);
    if soft >= need {
        return Ok(());
    }
    Err(MemlockShortfall {
        soft,
        hard,
        need,
        shards: config.shards.max(1),
    })
}

/// Checks this process's `RLIMIT_MEMLOCK` against what the shards of `config` need
/// ([`memlock_need`]). Run it before binding anything: glommio fails a shard that
/// cannot lock its memory only once the shard starts.
pub fn check_memlock(config: &RuntimeConfig) -> io::Result<()> {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::MEMLOCK)?;
    memlock_fits(config, soft, hard).map_err(|e| io::Error::new(io::ErrorKind::OutOfMemory, e))
}

/// The number of CPUs this process may run on.
pub fn available_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Resolves each address's port 0 to a concrete port before the shards bind them, and
/// refuses an address another process listens on.
///
/// Every glommio listener binding port 0 would get its own port, so port 0 is
/// resolved once here. Every probe binds WITHOUT SO_REUSEPORT: with it, the kernel lets
/// a second process of the same user that also sets SO_REUSEPORT (another relay, a
/// parallel test) bind the same port, and the two silently split the connections
/// between two stores. Without it, the bind fails with `EADDRINUSE` while anyone
/// listens there, posrelay or not. Sockets a previous instance left behind (accepted
/// connections in TIME_WAIT or still closing) do not refuse a restart: the probe sets
/// SO_REUSEADDR, which Linux honours for them (only a listening socket conflicts).
///
/// All probes are held until every address is resolved, then released together before
/// the shards bind: released one by one, the kernel could hand the port it just got
/// back to the next port-0 probe, and the relay and admin listeners (both bound with
/// SO_REUSEPORT) would then silently share one port, each taking a share of the
/// other's connections.
///
/// A refused address comes back as a [`PortError`] naming it, with what to change.
pub fn resolve_ports<const N: usize>(addrs: [SocketAddr; N]) -> Result<[SocketAddr; N], PortError> {
    let mut probes = Vec::with_capacity(N);
    let mut out = addrs;
    for (index, (slot, addr)) in out.iter_mut().zip(addrs).enumerate() {
        let fail = |source: io::Error| PortError {
            index,
            addr,
            source,
        };
        let domain = if addr.is_ipv4() {
            socket2::Domain::IPV4
        } else {
            socket2::Domain::IPV6
        };
        let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None).map_err(fail)?;
        socket.set_reuse_address(true).map_err(fail)?;
        socket.bind(&addr.into()).map_err(fail)?;
        *slot = socket
            .local_addr()
            .map_err(fail)?
            .as_socket()
            .ok_or_else(|| fail(io::Error::other("bound address is not an inet address")))?;
        probes.push(socket);
    }
    drop(probes);
    Ok(out)
}

/// An address the relay cannot listen on: which one (its index in the
/// [`resolve_ports`] call), and why.
#[derive(Debug)]
pub struct PortError {
    /// Index of the address in the call.
    pub index: usize,
    /// The address asked for.
    pub addr: SocketAddr,
    /// What the kernel said.
    pub source: io::Error,
}

impl PortError {
    /// The message for an operator: the address, the cause and what to change;
    /// `flag` names the setting that chose the address (`--listen`).
    pub fn explain(&self, flag: &str) -> String {
        let addr = self.addr;
        match self.source.raw_os_error() {
            Some(libc::EADDRINUSE) => format!(
                "cannot listen on {addr}: the address is already in use by another process \
                 (another posrelay, or anything else: `ss -ltnp 'sport = :{}'` shows which); \
                 stop it, or give {flag} another address",
                addr.port()
            ),
            Some(libc::EADDRNOTAVAIL) => format!(
                "cannot listen on {addr}: no network interface of this machine has the \
                 address {}; give {flag} one of this machine's addresses (or 0.0.0.0 for all)",
                addr.ip()
            ),
            Some(libc::EACCES) => format!(
                "cannot listen on {addr}: port {} is privileged; run with the \
                 CAP_NET_BIND_SERVICE capability (the systemd unit grants it) or give {flag} \
                 a port above 1023",
                addr.port()
            ),
            _ => format!("cannot listen on {addr} ({flag}): {}", self.source),
        }
    }
}

impl std::fmt::Display for PortError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.explain("the listen address"))
    }
}

impl std::error::Error for PortError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl From<PortError> for io::Error {
    fn from(e: PortError) -> io::Error {
        io::Error::new(e.source.kind(), e.to_string())
    }
}

/// Whether listeners on `a` and `b` would take each other's connections: the same port
/// on the same address, or on a wildcard address that covers the other (shards bind
/// with SO_REUSEPORT, so the kernel would not refuse the second bind). Port 0 (any free
/// port) never overlaps: [`resolve_ports`] gives each its own.
pub fn listeners_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Binds a std listener with SO_REUSEPORT for tests and tools that need a plain one.
pub fn bind_std(addr: SocketAddr) -> io::Result<StdListener> {
    StdListener::bind(addr)
}

/// Runs `fut_gen` on every shard and waits for all of them to finish.
pub fn run_shards<G, F, T>(config: &RuntimeConfig, fut_gen: G) -> io::Result<Vec<T>>
where
    G: FnOnce() -> F + Clone + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let shards = config.shards.max(1);
    let placement = if config.pin && shards <= available_cores() {
        PoolPlacement::MaxSpread(shards, None)
    } else {
        PoolPlacement::Unbound(shards)
    };
    let handles = LocalExecutorPoolBuilder::new(placement)
        .io_memory(config.io_memory)
        .name("posrelay-shard")
        .on_all_shards({
            let hook = config.on_shard_start;
            move || {
                if let Some(hook) = hook {
                    hook();
                }
                fut_gen()
            }
        })
        .map_err(|e| io::Error::other(e.to_string()))?;
    let mut out = Vec::with_capacity(shards);
    for result in handles.join_all() {
        out.push(result.map_err(|e| io::Error::other(e.to_string()))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_addresses_resolve_to_distinct_ports() {
        // Released one by one, two probes got the same port about once in 20,000 tries on
        // the CI machine (it failed a black-box test once); held together, never. This
        // only samples the kernel's choice, so it catches a regression with some chance
        // per run, not with certainty.
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        for _ in 0..20_000 {
            let [a, b] = resolve_ports([any, any]).unwrap();
            assert_ne!(a.port(), 0);
            assert_ne!(
                a.port(),
                b.port(),
                "two port-0 listeners resolved to one port"
            );
        }
    }

    #[test]
    fn a_fixed_port_resolves_to_itself() {
        let probe = StdListener::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let fixed = SocketAddr::from(([127, 0, 0, 1], port));
        assert_eq!(resolve_ports([fixed]).unwrap(), [fixed]);
    }

    #[test]
    fn a_port_another_process_listens_on_is_refused_even_with_so_reuseport() {
        // Another relay binds with SO_REUSEPORT; the kernel would let a second one of the
        // same user share the port. The probe must refuse it, naming the address.
        let other =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        other.set_reuse_address(true).unwrap();
        other.set_reuse_port(true).unwrap();
        other
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        other.listen(8).unwrap();
        let taken = other.local_addr().unwrap().as_socket().unwrap();
        let free: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let err = resolve_ports([free, taken]).unwrap_err();
        assert_eq!((err.index, err.addr), (1, taken));
        let text = err.explain("--admin-listen");
        assert!(text.contains(&taken.to_string()), "{text}");
        assert!(text.contains("already in use"), "{text}");
        assert!(text.contains("--admin-listen"), "{text}");
    }

    #[test]
    fn a_closing_connection_of_a_previous_instance_does_not_refuse_a_restart() {
        // A shard's listener (SO_REUSEPORT and SO_REUSEADDR, as glommio binds it) whose
        // accepted connection the server side closed first: that socket lingers in
        // TIME_WAIT on the listening port after the listener is gone.
        let listener =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        listener.set_reuse_port(true).unwrap();
        listener.set_reuse_address(true).unwrap();
        listener
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        listener.listen(8).unwrap();
        let listener: StdListener = listener.into();
        let addr = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(addr).unwrap();
        let (served, _) = listener.accept().unwrap();
        drop(served);
        let mut buf = [0u8; 1];
        use std::io::Read as _;
        assert_eq!((&client).read(&mut buf).unwrap(), 0);
        drop(client);
        drop(listener);
        assert_eq!(resolve_ports([addr]).unwrap(), [addr]);
    }

    #[test]
    fn an_address_not_on_this_machine_is_named() {
        // 192.0.2.0/24 is TEST-NET-1 (RFC 5737): never a local address. Only bound, never
        // sent to.
        let addr: SocketAddr = "192.0.2.1:8080".parse().unwrap();
        let err = resolve_ports([addr]).unwrap_err();
        let text = err.explain("--listen");
        assert!(text.contains("192.0.2.1:8080"), "{text}");
        assert!(text.contains("--listen"), "{text}");
    }

    #[test]
    fn memlock_need_counts_every_shard_and_glommios_floor() {
        let config = |shards, io_memory| RuntimeConfig {
            shards,
            io_memory,
            ..RuntimeConfig::default()
        };
        // Two shards of the default fit under glommio's own floor.
        assert_eq!(memlock_need(&config(2, MIN_IO_MEMORY)), GLOMMIO_MIN_MEMLOCK);
        // Sixteen need their buffers and rings each.
        assert_eq!(
            memlock_need(&config(16, MIN_IO_MEMORY)),
            16 * (64 * 1024 + RING_BYTES_PER_SHARD)
        );
        // io memory is rounded up to glommio's floor and to pages.
        assert_eq!(
            memlock_need(&config(8, 1)),
            memlock_need(&config(8, MIN_IO_MEMORY))
        );
        assert_eq!(
            memlock_need(&config(8, 100_000)),
            8 * (102_400 + RING_BYTES_PER_SHARD)
        );
    }

    #[test]
    fn a_low_memlock_limit_says_which_limit_to_raise_and_how() {
        let config = RuntimeConfig {
            shards: 2,
            ..RuntimeConfig::default()
        };
        assert!(memlock_fits(&config, 8 << 20, 8 << 20).is_ok());
        assert!(memlock_fits(&config, u64::MAX, u64::MAX).is_ok());
        let err = memlock_fits(&config, 64 * 1024, 64 * 1024).unwrap_err();
        assert_eq!(err.need, GLOMMIO_MIN_MEMLOCK);
        let text = err.to_string();
        for part in [
            "(RLIMIT_MEMLOCK) is 64 KiB",
            "need 512 KiB",
            "ulimit -l 512",
            "LimitMEMLOCK=",
            "only root can raise it",
        ] {
            assert!(text.contains(part), "{part:?} in {text}");
        }
        // A soft limit below a sufficient hard limit: the user may raise it.
        let err = memlock_fits(&config, 64 * 1024, u64::MAX).unwrap_err();
        assert!(!err.to_string().contains("only root"), "{err}");
    }

    #[test]
    fn overlapping_listeners_are_recognised() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(listeners_overlap(
            at("127.0.0.1:9000"),
            at("127.0.0.1:9000")
        ));
        assert!(listeners_overlap(at("0.0.0.0:9000"), at("127.0.0.1:9000")));
        assert!(listeners_overlap(at("127.0.0.1:9000"), at("0.0.0.0:9000")));
        assert!(!listeners_overlap(
            at("127.0.0.1:9000"),
            at("127.0.0.1:9080")
        ));
        assert!(!listeners_overlap(
            at("127.0.0.1:9000"),
            at("127.0.0.2:9000")
        ));
        assert!(!listeners_overlap(at("[::1]:9000"), at("127.0.0.1:9000")));
        assert!(!listeners_overlap(at("127.0.0.1:0"), at("127.0.0.1:0")));
    }
}
