//! §12 with §4's claim grace: "A claim ends … when the client's control channels and
//! session stay closed for the claim grace period", counting the channels on every node.
//!
//! Each shard of each other node (a *source*) says which clients have a control channel
//! homed on it: every change (a delta), and its whole list every refresh period (a full
//! list, which replaces what it said before: a restarted node's first list clears what
//! its previous run left). A source not heard for [`RemotePresence::new`]'s `ttl` is
//! forgotten (its node was lost, or cut off), so its clients' claims run their grace.
//! Pure: the caller brings the clock and carries the changes to the device shard.
#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::ids::ClientKey;

/// What one source said last, and when.
#[derive(Debug)]
struct Source {
    clients: HashSet<ClientKey>,
    heard: Instant,
}

/// Clients with a control channel on other nodes.
#[derive(Debug)]
pub struct RemotePresence {
    ttl: Duration,
    sources: HashMap<String, Source>,
    /// For each client, on how many sources it is present (never 0: removed then).
    counts: HashMap<ClientKey, usize>,
}

/// A client that became present on some other node (`true`) or on none any more.
pub type Change = (ClientKey, bool);

impl RemotePresence {
    /// Forgets a source not heard for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            sources: HashMap::new(),
            counts: HashMap::new(),
        }
    }

    /// Whether `client` has a control channel on another node.
    pub fn contains(&self, client: &ClientKey) -> bool {
        self.counts.contains_key(client)
    }

    /// `source` lists every client with a channel on it now.
    #[must_use = "the changes must reach the device shard"]
    pub fn handle_full(
        &mut self,
        source: &str,
        clients: Vec<ClientKey>,
        now: Instant,
    ) -> Vec<Change> {
        let fresh: HashSet<ClientKey> = clients.into_iter().collect();
        let old = self
            .sources
            .insert(
                source.to_owned(),
                Source {
                    clients: fresh.clone(),
                    heard: now,
                },
            )
            .map(|s| s.clients)
            .unwrap_or_default();
        let mut changes = Vec::new();
        for gone in old.difference(&fresh) {
            changes.extend(self.decrement(gone));
        }
        for new in fresh.difference(&old) {
            changes.extend(self.increment(new));
        }
        changes
    }

    /// `source` says `client` has a channel there now (`true`), or none any more.
    #[must_use = "the change must reach the device shard"]
    pub fn handle_delta(
        &mut self,
        source: &str,
        client: &ClientKey,
        present: bool,
        now: Instant,
    ) -> Option<Change> {
        let entry = self
            .sources
            .entry(source.to_owned())
            .or_insert_with(|| Source {
                clients: HashSet::new(),
                heard: now,
            });
        entry.heard = now;
        if present {
            if entry.clients.insert(client.clone()) {
                return self.increment(client);
            }
        } else if entry.clients.remove(client) {
            return self.decrement(client);
        }
        None
    }

    /// Forgets the sources not heard for the ttl at `now`.
    #[must_use = "the changes must reach the device shard"]
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Change> {
        let ttl = self.ttl;
        let stale: Vec<String> = self
            .sources
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.heard) >= ttl)
            .map(|(k, _)| k.clone())
            .collect();
        let mut changes = Vec::new();
        for key in stale {
            if let Some(source) = self.sources.remove(&key) {
                for client in &source.clients {
                    changes.extend(self.decrement(client));
                }
            }
        }
        changes
    }

    fn increment(&mut self, client: &ClientKey) -> Option<Change> {
        let n = self.counts.entry(client.clone()).or_insert(0);
        *n += 1;
        (*n == 1).then(|| (client.clone(), true))
    }

    fn decrement(&mut self, client: &ClientKey) -> Option<Change> {
        let n = self.counts.get_mut(client)?;
        *n -= 1;
        if *n > 0 {
            return None;
        }
        self.counts.remove(client);
        Some((client.clone(), false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ClientId, DomainName};

    fn client(id: &str) -> ClientKey {
        ClientKey {
            domain: DomainName::new("acme.com").unwrap(),
            client_id: ClientId::new(id).unwrap(),
        }
    }

    #[test]
    fn a_client_is_present_while_any_source_has_it_and_until_its_sources_go_quiet() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut p = RemotePresence::new(s(30));
        let (x, y) = (client("x"), client("y"));
        assert_eq!(p.handle_delta("b/0", &x, true, t0), Some((x.clone(), true)));
        assert_eq!(p.handle_delta("b/0", &x, true, t0), None, "said twice");
        assert_eq!(
            p.handle_full("c/1", vec![x.clone(), y.clone()], t0),
            vec![(y.clone(), true)]
        );
        assert!(p.contains(&x) && p.contains(&y));
        // x leaves b: still on c.
        assert_eq!(p.handle_delta("b/0", &x, false, t0 + s(1)), None);
        assert!(p.contains(&x));
        // c's next full list has only y.
        assert_eq!(
            p.handle_full("c/1", vec![y.clone()], t0 + s(10)),
            vec![(x.clone(), false)]
        );
        // b keeps talking, c goes quiet: y is forgotten 30 s after c's last word.
        let _ = p.handle_full("b/0", vec![], t0 + s(35));
        assert_eq!(p.handle_timeout(t0 + s(39)), vec![]);
        assert_eq!(p.handle_timeout(t0 + s(40)), vec![(y.clone(), false)]);
        assert!(!p.contains(&y));
        // A source that comes back is heard again.
        assert_eq!(
            p.handle_full("c/1", vec![y.clone()], t0 + s(41)),
            vec![(y, true)]
        );
    }
}
