//! Admission: how many connections the relay takes, how many may still be anonymous,
//! how many one client may hold, and how often anyone may fail a login. Each limit has
//! a default (see `posrelay serve --help`), refuses with an HTTP status that says when to
//! retry, and is counted in `/metrics`.
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
    /// POS connections (control channels and sessions) per client.
    pub max_per_client: usize,
    /// Failed logins per client id per [`LOGIN_WINDOW`].
    pub failed_logins_per_client: u32,
    /// Failed logins per source address per [`LOGIN_WINDOW`].
    pub failed_logins_per_address: u32,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        AdmissionLimits {
            max_connections: 16_384,
            max_unauthenticated: 1_024,
            max_per_client: 8_192,
            failed_logins_per_client: 10,
            failed_logins_per_address: 30,
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
    /// `--failed-logins-per-client`; retry after the duration.
    LoginRateClient(Duration),
    /// `--failed-logins-per-address`; retry after the duration.
    LoginRateAddress(Duration),
}

impl Refusal {
    const ALL: [&'static str; 5] = [
        "max_connections",
        "max_unauthenticated",
        "max_per_client",
        "login_rate_client",
        "login_rate_address",
    ];

    fn index(self) -> usize {
        match self {
            Refusal::MaxConnections => 0,
            Refusal::MaxUnauthenticated => 1,
            Refusal::MaxPerClient => 2,
            Refusal::LoginRateClient(_) => 3,
            Refusal::LoginRateAddress(_) => 4,
        }
    }

    /// Seconds the client should wait (`Retry-After`).
    pub fn retry_after_secs(self) -> u64 {
        match self {
            // Rounded up: a client that waits exactly this long must find the window over.
            Refusal::LoginRateClient(d) | Refusal::LoginRateAddress(d) => {
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

#[derive(Debug, Default)]
struct LoginFailures {
    clients: HashMap<String, Window>,
    addresses: HashMap<IpAddr, Window>,
}

/// The shared admission state.
#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    open: AtomicUsize,
    unauthenticated: AtomicUsize,
    per_client: Mutex<HashMap<ClientKey, usize>>,
    failures: Mutex<LoginFailures>,
    refused: [AtomicU64; 5],
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
        let open = self.open.fetch_add(1, Ordering::AcqRel);
        let conn = ConnSlot(self.clone());
        if open >= self.limits.max_connections {
            return Err(self.refuse(Refusal::MaxConnections));
        }
        let anonymous = self.unauthenticated.fetch_add(1, Ordering::AcqRel);
        let unauth = UnauthSlot(Some(self.clone()));
        if anonymous >= self.limits.max_unauthenticated {
            return Err(self.refuse(Refusal::MaxUnauthenticated));
        }
        Ok((conn, unauth))
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
        let blocked = |w: Option<&Window>, limit: u32| -> Option<Duration> {
            let w = w?;
            let age = now.saturating_duration_since(w.started);
            (age < LOGIN_WINDOW && w.failures >= limit).then(|| LOGIN_WINDOW - age)
        };
        if let Some(wait) = client_id.and_then(|id| {
            blocked(
                failures.clients.get(id),
                self.limits.failed_logins_per_client,
            )
        }) {
            drop(failures);
            return Err(self.refuse(Refusal::LoginRateClient(wait)));
        }
        if let Some(wait) = blocked(
            failures.addresses.get(&addr),
            self.limits.failed_logins_per_address,
        ) {
            drop(failures);
            return Err(self.refuse(Refusal::LoginRateAddress(wait)));
        }
        Ok(())
    }

    /// Records a failed login.
    pub fn login_failed(&self, client_id: Option<&str>, addr: IpAddr, now: Instant) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let bump = |w: &mut Window| {
            if now.saturating_duration_since(w.started) >= LOGIN_WINDOW {
                *w = Window {
                    started: now,
                    failures: 0,
                };
            }
            w.failures = w.failures.saturating_add(1);
        };
        let fresh = Window {
            started: now,
            failures: 0,
        };
        if let Some(id) = client_id {
            if failures.clients.len() >= MAX_TRACKED {
                failures
                    .clients
                    .retain(|_, w| now.saturating_duration_since(w.started) < LOGIN_WINDOW);
            }
            if failures.clients.len() < MAX_TRACKED || failures.clients.contains_key(id) {
                bump(failures.clients.entry(id.to_owned()).or_insert(fresh));
            }
        }
        if failures.addresses.len() >= MAX_TRACKED {
            failures
                .addresses
                .retain(|_, w| now.saturating_duration_since(w.started) < LOGIN_WINDOW);
        }
        bump(failures.addresses.entry(addr).or_insert(fresh));
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
            max_per_client: 1,
            failed_logins_per_client: 2,
            failed_logins_per_address: 3,
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
        match a.check_login(Some("c"), other, t0 + Duration::from_secs(10)) {
            Err(Refusal::LoginRateClient(wait)) => assert_eq!(wait, Duration::from_secs(50)),
            other => panic!("{other:?}"),
        }
        // Another client from the same address: 2 failures so far, limit 3.
        assert!(a.check_login(Some("d"), ip, t0).is_ok());
        a.login_failed(Some("d"), ip, t0);
        assert!(matches!(
            a.check_login(Some("e"), ip, t0),
            Err(Refusal::LoginRateAddress(_))
        ));
        // Retry-After rounds up: 49.5 s left is 50 s.
        match a.check_login(Some("c"), other, t0 + Duration::from_millis(10_500)) {
            Err(why @ Refusal::LoginRateClient(_)) => assert_eq!(why.retry_after_secs(), 50),
            other => panic!("{other:?}"),
        }
        // The window ends.
        assert!(a.check_login(Some("c"), other, t0 + LOGIN_WINDOW).is_ok());
    }
}
