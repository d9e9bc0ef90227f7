//! Admission: how many connections the relay takes, how many may still be anonymous,
//! how many one client may hold, and how often anyone may fail a login. Each limit has
//! a default (see `posrelay serve --help`), refuses with an HTTP status that says when to
//! retry, and is counted in `/metrics`.
//!
//! Failed logins are counted per client id *and* source address, per address, and per
//! client id over all addresses. A client id is not a secret (a store's terminals and
//! POS share one), so one misconfigured terminal only locks out its own address; the
//! per-client count has only a high ceiling, against guessing from many addresses, and
//! even beyond it an address that logged in as that client in the last day goes on.
//!
//! The counters are shared by the shards (atomics, and two small mutex-guarded maps);
//! they are touched when connections open, authenticate and close, never per frame.

use crate::ids::ClientKey;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The window failed logins are counted in.
pub const LOGIN_WINDOW: Duration = Duration::from_secs(60);

/// How long a successful login keeps its (client id, address) exempt from the
/// per-client ceiling.
pub const KNOWN_ADDRESS_FOR: Duration = Duration::from_secs(24 * 3600);

/// Beyond this many tracked keys, expired windows are swept (bounded memory under a
/// flood of made-up client ids).
const MAX_TRACKED: usize = 100_000;

/// The limits, as configured.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionLimits {
    /// Connections open at once on the relay listener.
    pub max_connections: usize,
    /// Connections that have not authenticated yet.
    pub max_unauthenticated: usize,
    /// How long a connection past `max_unauthenticated` waits for a place before it is
    /// refused (`waiting.rs`); zero refuses at once.
    pub max_unauthenticated_wait: Duration,
    /// POS connections (control channels and sessions) per client.
    pub max_per_client: usize,
    /// Failed logins per client id from one source address per [`LOGIN_WINDOW`].
    pub failed_logins_per_client: u32,
    /// Failed logins per source address (any client id) per [`LOGIN_WINDOW`].
    pub failed_logins_per_address: u32,
    /// Failed logins per client id from all addresses together per [`LOGIN_WINDOW`]:
    /// beyond, only addresses that logged in as that client before may try.
    pub failed_logins_per_client_total: u32,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        AdmissionLimits {
            max_connections: 16_384,
            max_unauthenticated: 1_024,
            max_unauthenticated_wait: Duration::from_secs(10),
            max_per_client: 8_192,
            failed_logins_per_client: 10,
            failed_logins_per_address: 30,
            failed_logins_per_client_total: 1_000,
        }
    }
}

/// Why a connection or a login was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-connections`.
    MaxConnections,
    /// `--max-unauthenticated`.
    MaxUnauthenticated,
    /// `--max-connections-per-client`.
    MaxPerClient,
    /// `--failed-logins-per-client` (this client id from this address); retry after
    /// the duration.
    LoginRateClient(Duration),
    /// `--failed-logins-per-address`; retry after the duration.
    LoginRateAddress(Duration),
    /// `--failed-logins-per-client-total`, from an address that has not logged in as
    /// this client recently; retry after the duration.
    LoginRateClientTotal(Duration),
}

impl Refusal {
    const ALL: [&'static str; 6] = [
        "max_connections",
        "max_unauthenticated",
        "max_per_client",
        "login_rate_client",
        "login_rate_address",
        "login_rate_client_total",
    ];

    fn index(self) -> usize {
        match self {
            Refusal::MaxConnections => 0,
            Refusal::MaxUnauthenticated => 1,
            Refusal::MaxPerClient => 2,
            Refusal::LoginRateClient(_) => 3,
            Refusal::LoginRateAddress(_) => 4,
            Refusal::LoginRateClientTotal(_) => 5,
        }
    }

    /// The metric label (`posrelay_refused_total{reason}`), also used in logs.
    pub fn reason(self) -> &'static str {
        Self::ALL[self.index()]
    }

    /// Seconds the client should wait (`Retry-After`).
    pub fn retry_after_secs(self) -> u64 {
        match self {
            // Rounded up: a client that waits exactly this long must find the window over.
            Refusal::LoginRateClient(d)
            | Refusal::LoginRateAddress(d)
            | Refusal::LoginRateClientTotal(d) => {
                (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
            }
            _ => 1,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

impl Window {
    /// How long `limit` failures in this window still refuse, if they do.
    fn blocks(&self, limit: u32, now: Instant) -> Option<Duration> {
        let age = now.saturating_duration_since(self.started);
        (age < LOGIN_WINDOW && self.failures >= limit).then(|| LOGIN_WINDOW - age)
    }

    /// Counts one failure (starting a new window if the last one is over); returns
    /// whether this failure reached `limit`.
    fn bump(&mut self, limit: u32, now: Instant) -> bool {
        if now.saturating_duration_since(self.started) >= LOGIN_WINDOW {
            *self = Window {
                started: now,
                failures: 0,
            };
        }
        self.failures = self.failures.saturating_add(1);
        self.failures == limit
    }
}

#[derive(Debug, Default)]
struct LoginFailures {
    /// (client id, address): `--failed-logins-per-client`.
    pairs: HashMap<(String, IpAddr), Window>,
    /// Address: `--failed-logins-per-address`.
    addresses: HashMap<IpAddr, Window>,
    /// Client id over all addresses: `--failed-logins-per-client-total`.
    clients: HashMap<String, Window>,
    /// Last successful login of a (client id, address).
    known: HashMap<(String, IpAddr), Instant>,
}

/// Counts a failure under `key` in `map`, bounded by [`MAX_TRACKED`]; whether it
/// reached `limit` (the moment the key locks).
fn bump_in<K: std::hash::Hash + Eq + Clone>(
    map: &mut HashMap<K, Window>,
    key: &K,
    limit: u32,
    now: Instant,
) -> bool {
    if map.len() >= MAX_TRACKED && !map.contains_key(key) {
        map.retain(|_, w| now.saturating_duration_since(w.started) < LOGIN_WINDOW);
        if map.len() >= MAX_TRACKED {
            return false;
        }
    }
    let w = map.entry(key.clone()).or_insert(Window {
        started: now,
        failures: 0,
    });
    w.bump(limit, now)
}

/// The shared admission state.
#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    open: AtomicUsize,
    unauthenticated: AtomicUsize,
    /// Connections waiting for an anonymous place (`waiting.rs`).
    waiting: AtomicUsize,
    per_client: Mutex<HashMap<ClientKey, usize>>,
    failures: Mutex<LoginFailures>,
    refused: [AtomicU64; 6],
}

/// One open connection (released on drop).
#[derive(Debug)]
pub struct ConnSlot(Arc<Admission>);

/// One not-yet-authenticated connection (released on drop or [`UnauthSlot::authenticated`]).
#[derive(Debug)]
pub struct UnauthSlot(Option<Arc<Admission>>);

/// One POS connection of a client (released on drop).
#[derive(Debug)]
pub struct ClientSlot(Arc<Admission>, ClientKey);

impl Admission {
    /// Admission with these limits.
    pub fn new(limits: AdmissionLimits) -> Arc<Admission> {
        Arc::new(Admission {
            limits,
            open: AtomicUsize::new(0),
            unauthenticated: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            per_client: Mutex::new(HashMap::new()),
            failures: Mutex::new(LoginFailures::default()),
            refused: Default::default(),
        })
    }

    fn refuse(&self, why: Refusal) -> Refusal {
        self.refused[why.index()].fetch_add(1, Ordering::Relaxed);
        why
    }

    /// A new connection on the relay listener: counts against both connection limits.
    pub fn admit(self: &Arc<Self>) -> Result<(ConnSlot, UnauthSlot), Refusal> {
        let conn = self.admit_connection()?;
        match self.try_unauthenticated() {
            Some(unauth) => Ok((conn, unauth)),
            None => Err(self.refuse_unauthenticated()),
        }
    }

    /// A new connection on the relay listener, counted against `--max-connections`
    /// only: it has yet to find an anonymous place ([`Self::try_unauthenticated`]).
    pub fn admit_connection(self: &Arc<Self>) -> Result<ConnSlot, Refusal> {
        let open = self.open.fetch_add(1, Ordering::AcqRel);
        let conn = ConnSlot(self.clone());
        if open >= self.limits.max_connections {
            return Err(self.refuse(Refusal::MaxConnections));
        }
        Ok(conn)
    }

    /// An anonymous place (`--max-unauthenticated`) if one is free now. Not finding
    /// one is not a refusal yet: the connection may wait for a place
    /// ([`Self::refuse_unauthenticated`] counts the refusal when it gives up).
    pub fn try_unauthenticated(self: &Arc<Self>) -> Option<UnauthSlot> {
        let limit = self.limits.max_unauthenticated;
        self.unauthenticated
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| UnauthSlot(Some(self.clone())))
    }

    /// How long a connection past `--max-unauthenticated` waits for a place.
    pub fn unauthenticated_wait(&self) -> Duration {
        self.limits.max_unauthenticated_wait
    }

    /// A connection starts (`true`) or stops waiting for an anonymous place.
    pub fn set_waiting(&self, started: bool) {
        if started {
            self.waiting.fetch_add(1, Ordering::AcqRel);
        } else {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// A connection found no anonymous place in time: counts the refusal.
    pub fn refuse_unauthenticated(&self) -> Refusal {
        self.refuse(Refusal::MaxUnauthenticated)
    }

    /// A POS connection of `client`.
    pub fn admit_client(self: &Arc<Self>, client: &ClientKey) -> Result<ClientSlot, Refusal> {
        let mut map = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(client.clone()).or_insert(0);
        if *n >= self.limits.max_per_client {
            drop(map);
            return Err(self.refuse(Refusal::MaxPerClient));
        }
        *n += 1;
        Ok(ClientSlot(self.clone(), client.clone()))
    }

    /// Whether a login by `client_id` from `addr` may be tried now.
    pub fn check_login(
        &self,
        client_id: Option<&str>,
        addr: IpAddr,
        now: Instant,
    ) -> Result<(), Refusal> {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let limits = &self.limits;
        let refusal = if let Some(wait) = client_id
            .and_then(|id| failures.pairs.get(&(id.to_owned(), addr)))
            .and_then(|w| w.blocks(limits.failed_logins_per_client, now))
        {
            Some(Refusal::LoginRateClient(wait))
        } else if let Some(wait) = failures
            .addresses
            .get(&addr)
            .and_then(|w| w.blocks(limits.failed_logins_per_address, now))
        {
            Some(Refusal::LoginRateAddress(wait))
        } else {
            client_id.and_then(|id| {
                let wait = failures
                    .clients
                    .get(id)?
                    .blocks(limits.failed_logins_per_client_total, now)?;
                let known = failures
                    .known
                    .get(&(id.to_owned(), addr))
                    .is_some_and(|t| now.saturating_duration_since(*t) < KNOWN_ADDRESS_FOR);
                (!known).then_some(Refusal::LoginRateClientTotal(wait))
            })
        };
        drop(failures);
        match refusal {
            Some(why) => Err(self.refuse(why)),
            None => Ok(()),
        }
    }

    /// Records a failed login, and logs the moment a limit locks (once per window).
    pub fn login_failed(&self, client_id: Option<&str>, addr: IpAddr, now: Instant) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let limits = self.limits;
        let window = LOGIN_WINDOW.as_secs();
        if let Some(id) = client_id {
            let pair = (id.to_owned(), addr);
            if bump_in(
                &mut failures.pairs,
                &pair,
                limits.failed_logins_per_client,
                now,
            ) {
                tracing::warn!(
                    client_id = id,
                    peer = %addr,
                    failures = limits.failed_logins_per_client,
                    window_secs = window,
                    "login lockout: this client id from this address is refused until the window ends (--failed-logins-per-client)"
                );
            }
            let total = limits.failed_logins_per_client_total;
            if bump_in(&mut failures.clients, &id.to_owned(), total, now) {
                tracing::warn!(
                    client_id = id,
                    failures = total,
                    window_secs = window,
                    "login lockout: this client id is refused from addresses it has not logged in from (--failed-logins-per-client-total)"
                );
            }
        }
        if bump_in(
            &mut failures.addresses,
            &addr,
            limits.failed_logins_per_address,
            now,
        ) {
            tracing::warn!(
                peer = %addr,
                failures = limits.failed_logins_per_address,
                window_secs = window,
                "login lockout: this address is refused for every client id until the window ends (--failed-logins-per-address)"
            );
        }
    }

    /// Records a successful login: the address stays exempt from the per-client
    /// ceiling for [`KNOWN_ADDRESS_FOR`].
    pub fn login_succeeded(&self, client_id: &str, addr: IpAddr, now: Instant) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let key = (client_id.to_owned(), addr);
        if failures.known.len() >= MAX_TRACKED && !failures.known.contains_key(&key) {
            failures
                .known
                .retain(|_, t| now.saturating_duration_since(*t) < KNOWN_ADDRESS_FOR);
            if failures.known.len() >= MAX_TRACKED {
                return;
            }
        }
        failures.known.insert(key, now);
    }

    /// Appends the admission series (Prometheus text format).
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP posrelay_refused_total Connections and logins refused by an admission limit, by reason.");
        let _ = writeln!(out, "# TYPE posrelay_refused_total counter");
        for (i, reason) in Refusal::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "posrelay_refused_total{{reason=\"{reason}\"}} {}",
                self.refused[i].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP posrelay_open_connections Connections open on the relay listener."
        );
        let _ = writeln!(out, "# TYPE posrelay_open_connections gauge");
        let _ = writeln!(
            out,
            "posrelay_open_connections {}",
            self.open.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# HELP posrelay_unauthenticated_connections Connections that have not authenticated yet.");
        let _ = writeln!(out, "# TYPE posrelay_unauthenticated_connections gauge");
        let _ = writeln!(
            out,
            "posrelay_unauthenticated_connections {}",
            self.unauthenticated.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# HELP posrelay_unauthenticated_waiting Connections waiting for a place under --max-unauthenticated.");
        let _ = writeln!(out, "# TYPE posrelay_unauthenticated_waiting gauge");
        let _ = writeln!(
            out,
            "posrelay_unauthenticated_waiting {}",
            self.waiting.load(Ordering::Relaxed)
        );
    }
}

/// The failed-login limits as one login attempt sees them (the hook of
/// [`crate::auth::ClientLogin`], shared by the token endpoint and §7c's Basic upgrades):
/// from `peer`, at the time it was made. `Send`, so that the attempt can run on the
/// blocking pool with its argon2 check.
#[derive(Debug, Clone)]
pub struct LoginAttemptFrom {
    admission: Arc<Admission>,
    peer: IpAddr,
    at: Instant,
}

impl Admission {
    /// The limits of a login attempted by `peer` at `at`.
    pub fn attempt_from(self: &Arc<Self>, peer: IpAddr, at: Instant) -> LoginAttemptFrom {
        LoginAttemptFrom {
            admission: self.clone(),
            peer,
            at,
        }
    }
}

impl crate::auth::LoginAttempts for LoginAttemptFrom {
    fn check(&self, client_id: Option<&str>) -> Result<(), crate::auth::LoginThrottled> {
        self.admission
            .check_login(client_id, self.peer, self.at)
            .map_err(|why| crate::auth::LoginThrottled {
                retry_after_secs: why.retry_after_secs(),
            })
    }

    fn failed(&self, client_id: Option<&str>) {
        self.admission.login_failed(client_id, self.peer, self.at);
    }

    fn succeeded(&self, client_id: &str) {
        self.admission
            .login_succeeded(client_id, self.peer, self.at);
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl UnauthSlot {
    /// The connection authenticated (or registered): it no longer counts as anonymous.
    pub fn authenticated(mut self) {
        self.release();
    }

    fn release(&mut self) {
        if let Some(a) = self.0.take() {
            a.unauthenticated.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for UnauthSlot {
    fn drop(&mut self) {
        self.release();
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut map = self.0.per_client.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ClientId, DomainName};

    fn limits() -> AdmissionLimits {
        AdmissionLimits {
            max_connections: 2,
            max_unauthenticated: 1,
            max_unauthenticated_wait: Duration::ZERO,
            max_per_client: 1,
            failed_logins_per_client: 2,
            failed_logins_per_address: 3,
            failed_logins_per_client_total: 4,
        }
    }

    #[test]
    fn connection_limits_count_and_release() {
        let a = Admission::new(limits());
        let (c1, u1) = a.admit().unwrap();
        assert_eq!(a.admit().unwrap_err(), Refusal::MaxUnauthenticated);
        u1.authenticated();
        let (_c2, _u2) = a.admit().unwrap();
        assert_eq!(a.admit().unwrap_err(), Refusal::MaxConnections);
        drop(c1);
        assert_eq!(a.admit().unwrap_err(), Refusal::MaxUnauthenticated);
        let mut text = String::new();
        a.render(&mut text);
        assert!(text.contains("posrelay_refused_total{reason=\"max_connections\"} 1"));
        assert!(text.contains("posrelay_refused_total{reason=\"max_unauthenticated\"} 2"));
    }

    #[test]
    fn looking_for_an_anonymous_place_is_not_a_refusal() {
        let a = Admission::new(limits());
        let (_c1, u1) = a.admit().unwrap();
        let _c2 = a.admit_connection().unwrap();
        assert!(a.try_unauthenticated().is_none(), "the only place is taken");
        let mut text = String::new();
        a.render(&mut text);
        assert!(text.contains("posrelay_refused_total{reason=\"max_unauthenticated\"} 0"));
        assert!(text.contains("posrelay_unauthenticated_connections 1"));
        a.set_waiting(true);
        let mut text = String::new();
        a.render(&mut text);
        assert!(text.contains("posrelay_unauthenticated_waiting 1"));
        // The place frees: the waiting connection takes it.
        drop(u1);
        let u2 = a.try_unauthenticated().expect("the freed place");
        a.set_waiting(false);
        assert_eq!(a.refuse_unauthenticated(), Refusal::MaxUnauthenticated);
        let mut text = String::new();
        a.render(&mut text);
        assert!(text.contains("posrelay_refused_total{reason=\"max_unauthenticated\"} 1"));
        assert!(text.contains("posrelay_unauthenticated_waiting 0"));
        assert!(text.contains("posrelay_unauthenticated_connections 1"));
        drop(u2);
    }

    #[test]
    fn per_client_limit() {
        let a = Admission::new(limits());
        let k = ClientKey {
            domain: DomainName::new("acme").unwrap(),
            client_id: ClientId::new("c").unwrap(),
        };
        let slot = a.admit_client(&k).unwrap();
        assert_eq!(a.admit_client(&k).unwrap_err(), Refusal::MaxPerClient);
        drop(slot);
        assert!(a.admit_client(&k).is_ok());
    }

    #[test]
    fn a_login_attempt_counts_against_the_same_limits() {
        use crate::auth::LoginAttempts;
        let a = Admission::new(limits());
        let t0 = Instant::now();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let attempt = a.attempt_from(ip, t0);
        attempt.failed(Some("c"));
        assert!(attempt.check(Some("c")).is_ok());
        attempt.failed(Some("c"));
        let throttled = attempt.check(Some("c")).unwrap_err();
        assert_eq!(throttled.retry_after_secs, 60);
        // The same window as a failure recorded directly.
        assert!(matches!(
            a.check_login(Some("c"), ip, t0),
            Err(Refusal::LoginRateClient(_))
        ));
        let mut text = String::new();
        a.render(&mut text);
        assert!(text.contains("posrelay_refused_total{reason=\"login_rate_client\"} 2"));
    }

    #[test]
    fn failed_logins_block_for_the_rest_of_the_window() {
        let a = Admission::new(limits());
        let t0 = Instant::now();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        a.login_failed(Some("c"), ip, t0);
        assert!(a.check_login(Some("c"), ip, t0).is_ok());
        a.login_failed(Some("c"), ip, t0);
        match a.check_login(Some("c"), ip, t0 + Duration::from_secs(10)) {
            Err(Refusal::LoginRateClient(wait)) => assert_eq!(wait, Duration::from_secs(50)),
            other => panic!("{other:?}"),
        }
        // The same client id from another address is not this address's business.
        assert!(a
            .check_login(Some("c"), other, t0 + Duration::from_secs(10))
            .is_ok());
        // Another client from the same address: 2 failures so far, limit 3.
        assert!(a.check_login(Some("d"), ip, t0).is_ok());
        a.login_failed(Some("d"), ip, t0);
        assert!(matches!(
            a.check_login(Some("e"), ip, t0),
            Err(Refusal::LoginRateAddress(_))
        ));
        // Retry-After rounds up: 49.5 s left is 50 s.
        match a.check_login(Some("c"), ip, t0 + Duration::from_millis(10_500)) {
            Err(why @ Refusal::LoginRateClient(_)) => assert_eq!(why.retry_after_secs(), 50),
            other => panic!("{other:?}"),
        }
        // The window ends.
        assert!(a.check_login(Some("c"), ip, t0 + LOGIN_WINDOW).is_ok());
    }

    #[test]
    fn one_failing_address_never_locks_the_client_out_elsewhere() {
        // The case: a terminal with a wrong secret keeps failing.
        let a = Admission::new(AdmissionLimits::default());
        let t0 = Instant::now();
        let broken: IpAddr = "10.0.0.2".parse().unwrap();
        let healthy: IpAddr = "10.0.0.3".parse().unwrap();
        for _ in 0..50 {
            a.login_failed(Some("store"), broken, t0);
        }
        assert!(a.check_login(Some("store"), broken, t0).is_err());
        assert!(a.check_login(Some("store"), healthy, t0).is_ok());
        assert!(a.check_login(Some("other"), healthy, t0).is_ok());
    }

    #[test]
    fn the_client_ceiling_spares_addresses_that_logged_in_before() {
        let a = Admission::new(limits());
        let t0 = Instant::now();
        let known: IpAddr = "10.0.0.9".parse().unwrap();
        a.login_succeeded("c", known, t0);
        for i in 0..4u8 {
            a.login_failed(Some("c"), IpAddr::from([10, 0, 1, i]), t0);
        }
        let fresh = IpAddr::from([10, 0, 2, 1]);
        assert!(matches!(
            a.check_login(Some("c"), fresh, t0),
            Err(Refusal::LoginRateClientTotal(_))
        ));
        assert!(a.check_login(Some("c"), known, t0).is_ok());
        // Known for a day, not forever.
        let t1 = t0 + KNOWN_ADDRESS_FOR;
        for i in 0..4u8 {
            a.login_failed(Some("c"), IpAddr::from([10, 0, 3, i]), t1);
        }
        assert!(a.check_login(Some("c"), known, t1).is_err());
        let mut text = String::new();
        a.render(&mut text);
        assert!(text.contains("posrelay_refused_total{reason=\"login_rate_client_total\"} 2"));
    }
}
