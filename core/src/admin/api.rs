//! The admin API (PROTOCOL.md §9) as a sans-IO request handler.

use rand::{CryptoRng, RngCore};

use super::body::{
    self, ClientList, ClientListEntry, ClientOut, DeviceList, DeviceListEntry, DeviceOut,
    DomainList, DomainOut, StoreList, StoreOut,
};
use super::response::ErrorBody;
use super::route::Route;
use super::{AdminEffect, AdminError, AdminResponse, AdminToken, DevicePresence};
use crate::auth::{new_client_credentials, SecretHasher, TsnInput};
use crate::ids::{
    ClientId, ClientKey, DeviceModelName, DomainName, MerchantName, Serial, StoreName,
};
use crate::store::{ClientRecord, DeviceRecord, Store, StoreError, StoreRecord};
use crate::tenancy::{CertFingerprint, Scope};

/// The admin API over a store: checks the admin token, routes, validates, writes.
#[derive(Debug)]
pub struct AdminApi<S: Store> {
    store: S,
    token: AdminToken,
    hasher: SecretHasher,
}

impl<S: Store> AdminApi<S> {
    /// An admin API writing to `store`, guarded by `token`, hashing new client secrets
    /// with `hasher`.
    pub fn new(store: S, token: AdminToken, hasher: SecretHasher) -> Self {
        Self {
            store,
            token,
            hasher,
        }
    }

    /// Whether `authorization` carries the admin token (for work done before `handle`).
    pub fn check_token(&self, authorization: Option<&str>) -> bool {
        self.token.check_header(authorization).is_ok()
    }

    /// The store behind the API.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Answers one admin request. `authorization` is the `Authorization` header, `body`
    /// the whole request body; `presence` tells which devices are online and claimed;
    /// `rng` makes client ids and secrets; `now` (unix seconds) dates a rotated-out
    /// secret's deadline. Every write is durable before this returns, and a refused
    /// call changes nothing.
    #[allow(clippy::too_many_arguments)]
    pub fn handle(
        &self,
        method: &str,
        path: &str,
        authorization: Option<&str>,
        body: &[u8],
        presence: &dyn DevicePresence,
        rng: &mut (impl RngCore + CryptoRng),
        now: u64,
    ) -> AdminResponse {
        match self.dispatch(method, path, authorization, body, presence, rng, now) {
            Ok(response) => response,
            Err(err) => error_response(&err),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        &self,
        method: &str,
        path: &str,
        authorization: Option<&str>,
        body: &[u8],
        presence: &dyn DevicePresence,
        rng: &mut (impl RngCore + CryptoRng),
        now: u64,
    ) -> Result<AdminResponse, AdminError> {
        // The token first: without it, not even which paths exist is told.
        self.token.check_header(authorization)?;
        let route = Route::parse(path).ok_or_else(|| AdminError::UnknownPath {
            path: path.chars().take(200).collect(),
        })?;
        // RFC 9110 §9.1: method names are case-sensitive.
        match (&route, method) {
            (Route::Domains, "POST") => self.create_domain(body),
            (Route::Domains, "GET") => self.list_domains(),
            (Route::Domain { domain }, "DELETE") => self.delete_domain(domain),
            (Route::Stores { domain }, "GET") => self.list_stores(domain),
            (Route::Store { domain, store }, "DELETE") => self.delete_store(domain, store),
            (Route::Clients { domain }, "GET") => self.list_clients(domain),
            (Route::Stores { domain }, "POST") => self.create_store(domain, body),
            (Route::Clients { domain }, "POST") => self.create_client(domain, body, rng),
            (Route::Client { domain, client_id }, "DELETE") => {
                self.delete_client(domain, client_id)
            }
            (Route::ClientSecret { domain, client_id }, "POST") => {
                self.rotate_secret(domain, client_id, body, rng, now)
            }
            (Route::Devices { domain }, "POST") => self.create_device(domain, body),
            (Route::Devices { domain }, "GET") => self.list_devices(domain, presence),
            (Route::Device { domain, tsn }, "PATCH") => self.patch_device(domain, tsn, body),
            _ => Err(AdminError::MethodNotAllowed {
                method: method.chars().take(20).collect(),
                allowed: route.allowed(),
            }),
        }
    }

    fn create_domain(&self, body: &[u8]) -> Result<AdminResponse, AdminError> {
        let req: body::NewDomain = body::parse(body, r#"{"domain":"acme"}"#)?;
        let domain = DomainName::new(req.domain)?;
        self.store.create_domain(&domain)?;
        Ok(AdminResponse::json(
            201,
            &DomainOut {
                domain: domain.as_str(),
            },
        ))
    }

    fn list_domains(&self) -> Result<AdminResponse, AdminError> {
        let domains = self.store.list_domains()?;
        Ok(AdminResponse::json(
            200,
            &DomainList {
                domains: domains.iter().map(DomainName::as_str).collect(),
            },
        ))
    }

    fn delete_domain(&self, domain: &str) -> Result<AdminResponse, AdminError> {
        self.store.delete_domain(&path_domain(domain)?)?;
        Ok(AdminResponse::no_content())
    }

    fn list_stores(&self, domain: &str) -> Result<AdminResponse, AdminError> {
        let stores = self.store.list_stores(&path_domain(domain)?)?;
        Ok(AdminResponse::json(
            200,
            &StoreList {
                stores: stores
                    .iter()
                    .map(|r| StoreOut {
                        store: r.store.as_str(),
                        merchant: r.merchant.as_str(),
                    })
                    .collect(),
            },
        ))
    }

    fn delete_store(&self, domain: &str, store: &str) -> Result<AdminResponse, AdminError> {
        let domain = path_domain(domain)?;
        let name = StoreName::new(store).map_err(|_| StoreError::UnknownStore {
            domain: domain.to_string(),
            store: store.chars().take(64).collect(),
        })?;
        self.store.delete_store(&domain, &name)?;
        Ok(AdminResponse::no_content())
    }

    fn list_clients(&self, domain: &str) -> Result<AdminResponse, AdminError> {
        let clients = self.store.list_clients(&path_domain(domain)?)?;
        Ok(AdminResponse::json(
            200,
            &ClientList {
                clients: clients
                    .iter()
                    .map(|c| ClientListEntry {
                        client_id: c.client_id.as_str(),
                        store: match &c.scope {
                            Scope::Store(s) => Some(s.as_str()),
                            Scope::Domain => None,
                        },
                    })
                    .collect(),
            },
        ))
    }

    fn create_store(&self, domain: &str, body: &[u8]) -> Result<AdminResponse, AdminError> {
        let req: body::NewStore = body::parse(body, r#"{"store":"s1","merchant":"m1"}"#)?;
        let record = StoreRecord {
            domain: path_domain(domain)?,
            store: StoreName::new(req.store)?,
            merchant: MerchantName::new(req.merchant)?,
        };
        self.store.create_store(&record)?;
        Ok(AdminResponse::json(
            201,
            &StoreOut {
                store: record.store.as_str(),
                merchant: record.merchant.as_str(),
            },
        ))
    }

    fn create_client(
        &self,
        domain: &str,
        body: &[u8],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<AdminResponse, AdminError> {
        let req: body::NewClient =
            body::parse(body, r#"{"store":"s1"} or {} for a domain-wide client"#)?;
        let domain = path_domain(domain)?;
        let scope = match req.store {
            Some(store) => Scope::Store(StoreName::new(store)?),
            None => Scope::Domain,
        };
        let (client_id, secret, secret_hash) = new_client_credentials(&self.hasher, rng);
        self.store.create_client(&ClientRecord {
            domain,
            client_id: client_id.clone(),
            scope,
            secret_hash,
            previous_secret: None,
        })?;
        Ok(AdminResponse::json(
            201,
            &ClientOut {
                client_id: client_id.as_str(),
                client_secret: secret.expose(),
            },
        ))
    }

    fn rotate_secret(
        &self,
        domain: &str,
        client_id: &str,
        body: &[u8],
        rng: &mut (impl RngCore + CryptoRng),
        now: u64,
    ) -> Result<AdminResponse, AdminError> {
        let req: body::Rotation = if body.iter().all(u8::is_ascii_whitespace) {
            body::Rotation::default()
        } else {
            body::parse(body, r#"{"grace_seconds":86400} or {} for a day"#)?
        };
        let domain = path_domain(domain)?;
        let unknown = || StoreError::UnknownClient {
            domain: domain.to_string(),
            client_id: client_id.chars().take(64).collect(),
        };
        let client_id = ClientId::new(client_id).map_err(|_| unknown())?;
        let grace = req.grace_seconds.unwrap_or(body::DEFAULT_GRACE_SECONDS);
        let (_, secret, secret_hash) = new_client_credentials(&self.hasher, rng);
        let valid_until = now.saturating_add(grace);
        self.store
            .rotate_client_secret(&domain, &client_id, &secret_hash, valid_until)?;
        Ok(AdminResponse::json(
            200,
            &body::RotatedOut {
                client_id: client_id.as_str(),
                client_secret: secret.expose(),
                previous_secret_valid_until: valid_until,
            },
        )
        .with_effect(AdminEffect::ClientSecretRotated(ClientKey {
            domain,
            client_id,
        })))
    }

    fn delete_client(&self, domain: &str, client_id: &str) -> Result<AdminResponse, AdminError> {
        let domain = path_domain(domain)?;
        let unknown = || StoreError::UnknownClient {
            domain: domain.to_string(),
            client_id: client_id.chars().take(64).collect(),
        };
        let client_id = ClientId::new(client_id).map_err(|_| unknown())?;
        self.store.delete_client(&domain, &client_id)?;
        Ok(AdminResponse::no_content()
            .with_effect(AdminEffect::ClientDeleted(ClientKey { domain, client_id })))
    }

    fn create_device(&self, domain: &str, body: &[u8]) -> Result<AdminResponse, AdminError> {
        let req: body::NewDevice = body::parse(
            body,
            r#"{"tsn":"12345678","make":"ingenico","model":"axium","store":"s1"} (optionally "client_cert_sha256":["<64 hex>"])"#,
        )?;
        let record = DeviceRecord {
            domain: path_domain(domain)?,
            serial: Serial::new(req.tsn)?,
            make: DeviceModelName::new(req.make)?,
            model: DeviceModelName::new(req.model)?,
            store: StoreName::new(req.store)?,
            enabled: true,
            client_cert_sha256: parse_pins(&req.client_cert_sha256)?,
        };
        self.store.create_device(&record)?;
        Ok(AdminResponse::json(201, &device_out(&record)))
    }

    fn patch_device(
        &self,
        domain: &str,
        tsn: &str,
        body: &[u8],
    ) -> Result<AdminResponse, AdminError> {
        let req: body::DevicePatch = body::parse(
            body,
            r#"{"enabled":false} and/or {"client_cert_sha256":["<64 hex>"]}"#,
        )?;
        let pins = req
            .client_cert_sha256
            .as_deref()
            .map(parse_pins)
            .transpose()?;
        if req.enabled.is_none() && pins.is_none() {
            return Err(AdminError::EmptyPatch);
        }
        let domain = path_domain(domain)?;
        let unknown = || StoreError::UnknownDevice {
            domain: domain.to_string(),
            serial: tsn.chars().take(64).collect(),
        };
        // The path may name the device by bare serial or qualified tsn (PROTOCOL.md §2).
        let tsn = TsnInput::parse(tsn).map_err(|_| unknown())?;
        let Some(current) = self
            .store
            .get_device(&domain, tsn.serial())?
            .filter(|device| tsn.matches(device))
        else {
            if !self.store.domain_exists(&domain)? {
                return Err(StoreError::UnknownDomain {
                    domain: domain.to_string(),
                }
                .into());
            }
            return Err(unknown().into());
        };
        // The pins first: the only write here that can be refused (409), so that a refused
        // call changes nothing.
        let mut updated = current.clone();
        if let Some(pins) = &pins {
            updated = self.store.set_device_pins(&domain, &current.serial, pins)?;
        }
        if let Some(enabled) = req.enabled {
            updated = self
                .store
                .set_device_enabled(&domain, &current.serial, enabled)?;
        }
        let response = AdminResponse::json(200, &device_out(&updated));
        let removed: Vec<_> = current
            .client_cert_sha256
            .iter()
            .filter(|fp| !updated.is_pinned(fp))
            .copied()
            .collect();
        Ok(if !updated.enabled {
            // PROTOCOL.md §9: "a disabled device's connection is closed (1008)" (whatever
            // certificate it was made with).
            response.with_effect(AdminEffect::DeviceDisabled(updated.key()))
        } else if !removed.is_empty() {
            // §2a: "Removing a pin closes a live connection made with it (1008)".
            response.with_effect(AdminEffect::CertPinsRemoved {
                device: updated.key(),
                removed,
            })
        } else {
            response
        })
    }

    fn list_devices(
        &self,
        domain: &str,
        presence: &dyn DevicePresence,
    ) -> Result<AdminResponse, AdminError> {
        let domain = path_domain(domain)?;
        let devices = self.store.list_devices(&domain)?;
        let entries = devices
            .iter()
            .map(|device| {
                let now = presence.presence(&device.domain, &device.serial);
                DeviceListEntry {
                    tsn: device.serial.as_str(),
                    store: device.store.as_str(),
                    enabled: device.enabled,
                    online: now.online,
                    claimed_by: now.claimed_by.map(|c| c.as_str().to_owned()),
                    client_cert_sha256: pins_out(device),
                }
            })
            .collect();
        Ok(AdminResponse::json(200, &DeviceList { devices: entries }))
    }
}

/// A domain named in the path: a name that cannot exist is an unknown domain (404).
fn path_domain(domain: &str) -> Result<DomainName, StoreError> {
    DomainName::new(domain).map_err(|_| StoreError::UnknownDomain {
        domain: domain.chars().take(64).collect(),
    })
}

fn device_out(device: &DeviceRecord) -> DeviceOut<'_> {
    DeviceOut {
        tsn: device.serial.as_str(),
        make: device.make.as_str(),
        model: device.model.as_str(),
        store: device.store.as_str(),
        enabled: device.enabled,
        client_cert_sha256: pins_out(device),
    }
}

/// The most client certificates one device may have pinned: a rotation needs two; a few
/// more leave room for several terminals' worth of staged rotations, not for a list
/// nobody maintains.
pub const MAX_PINS_PER_DEVICE: usize = 16;

/// §9 `client_cert_sha256` as sent: 64 hex digits each, either case (else `400`);
/// repeats are dropped, the order kept; at most [`MAX_PINS_PER_DEVICE`].
fn parse_pins(texts: &[String]) -> Result<Vec<CertFingerprint>, AdminError> {
    let mut pins: Vec<CertFingerprint> = Vec::with_capacity(texts.len());
    for (position, text) in texts.iter().enumerate() {
        let fp = CertFingerprint::parse_hex(text)
            .map_err(|error| AdminError::InvalidFingerprint { position, error })?;
        if !pins.contains(&fp) {
            pins.push(fp);
        }
    }
    if pins.len() > MAX_PINS_PER_DEVICE {
        return Err(AdminError::TooManyPins {
            count: pins.len(),
            max: MAX_PINS_PER_DEVICE,
        });
    }
    Ok(pins)
}

/// §9: pins are "answered in lowercase".
fn pins_out(device: &DeviceRecord) -> Vec<String> {
    device
        .client_cert_sha256
        .iter()
        .map(CertFingerprint::to_hex)
        .collect()
}

fn error_response(err: &AdminError) -> AdminResponse {
    if err.status() >= 500 {
        tracing::error!(error = %err, "admin call failed");
    }
    let message = err.to_string();
    let mut response = AdminResponse::json(err.status(), &ErrorBody { error: &message });
    match err {
        // RFC 6750 §3: a 401 names the scheme.
        AdminError::MissingToken => response
            .headers
            .push(("WWW-Authenticate", r#"Bearer realm="posrelay-admin""#)),
        AdminError::WrongToken => response.headers.push((
            "WWW-Authenticate",
            r#"Bearer realm="posrelay-admin", error="invalid_token""#,
        )),
        AdminError::MethodNotAllowed { allowed, .. } => response.headers.push(("Allow", allowed)),
        _ => {}
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::{NoPresence, Presence};
    use crate::auth::HashCost;
    use crate::store::MemStore;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const AUTH: Option<&str> = Some("Bearer admintoken");
    const NOW: u64 = 1_700_000_000;

    struct Admin {
        api: AdminApi<MemStore>,
        rng: StdRng,
    }

    impl Admin {
        fn new() -> Self {
            Self {
                api: AdminApi::new(
                    MemStore::new(),
                    AdminToken::new("admintoken").unwrap(),
                    SecretHasher::new(HashCost::TEST_ONLY),
                ),
                rng: StdRng::seed_from_u64(5),
            }
        }

        fn call(&mut self, method: &str, path: &str, body: &str) -> AdminResponse {
            self.api.handle(
                method,
                path,
                AUTH,
                body.as_bytes(),
                &NoPresence,
                &mut self.rng,
                NOW,
            )
        }

        /// acme with store s1 and device 12345678.
        fn provisioned() -> Self {
            let mut a = Self::new();
            assert_eq!(
                a.call("POST", "/admin/v1/domains", r#"{"domain":"acme"}"#)
                    .status,
                201
            );
            let r = a.call(
                "POST",
                "/admin/v1/domains/acme/stores",
                r#"{"store":"s1","merchant":"m1"}"#,
            );
            assert_eq!(r.status, 201);
            let r = a.call(
                "POST",
                "/admin/v1/domains/acme/devices",
                r#"{"tsn":"12345678","make":"ingenico","model":"axium","store":"s1"}"#,
            );
            assert_eq!(r.status, 201);
            a
        }
    }

    fn text(r: &AdminResponse) -> &str {
        std::str::from_utf8(&r.body).unwrap()
    }

    fn error_of(r: &AdminResponse) -> String {
        #[derive(serde::Deserialize)]
        struct E {
            error: String,
        }
        let mut body = r.body.clone();
        simd_json::serde::from_slice::<E>(&mut body).unwrap().error
    }

    #[test]
    fn provisioning_table_happy_path() {
        let mut a = Admin::provisioned();
        let r = a.call("GET", "/admin/v1/domains/acme/devices", "");
        assert_eq!(r.status, 200);
        assert_eq!(
            text(&r),
            r#"{"devices":[{"tsn":"12345678","store":"s1","enabled":true,"online":false,"claimed_by":null,"client_cert_sha256":[]}]}"#
        );

        let r = a.call(
            "PATCH",
            "/admin/v1/domains/acme/devices/12345678",
            r#"{"enabled":false}"#,
        );
        assert_eq!(r.status, 200);
        assert_eq!(
            text(&r),
            r#"{"tsn":"12345678","make":"ingenico","model":"axium","store":"s1","enabled":false,"client_cert_sha256":[]}"#
        );
        let key = crate::ids::DeviceKey {
            domain: DomainName::new("acme").unwrap(),
            serial: Serial::new("12345678").unwrap(),
        };
        assert_eq!(r.effect, Some(AdminEffect::DeviceDisabled(key)));
        let r = a.call("GET", "/admin/v1/domains/acme/devices", "");
        assert!(text(&r).contains(r#""enabled":false"#));

        // Re-enabling has no effect for the relay to apply.
        let r = a.call(
            "PATCH",
            "/admin/v1/domains/acme/devices/12345678",
            r#"{"enabled":true}"#,
        );
        assert_eq!((r.status, r.effect), (200, None));
    }

    #[test]
    fn client_secret_is_shown_once_and_stored_as_hash() {
        let mut a = Admin::provisioned();
        let r = a.call(
            "POST",
            "/admin/v1/domains/acme/clients",
            r#"{"store":"s1"}"#,
        );
        assert_eq!(r.status, 201);
        #[derive(serde::Deserialize)]
        struct Created {
            client_id: String,
            client_secret: String,
        }
        let mut body = r.body.clone();
        let created: Created = simd_json::serde::from_slice(&mut body).unwrap();
        let domain = DomainName::new("acme").unwrap();
        let id = ClientId::new(created.client_id.as_str()).unwrap();
        let record = a.api.store().get_client(&domain, &id).unwrap().unwrap();
        assert_eq!(record.scope, Scope::Store(StoreName::new("s1").unwrap()));
        assert!(!record.secret_hash.as_phc().contains(&created.client_secret));
        assert!(a
            .api
            .hasher
            .verify_secret(&record.secret_hash, created.client_secret.as_bytes()));

        let r = a.call("POST", "/admin/v1/domains/acme/clients", "{}");
        assert_eq!(r.status, 201);

        let path = format!("/admin/v1/domains/acme/clients/{}", created.client_id);
        let r = a.call("DELETE", &path, "");
        assert_eq!((r.status, r.body.len()), (204, 0));
        assert_eq!(
            r.effect,
            Some(AdminEffect::ClientDeleted(ClientKey {
                domain: domain.clone(),
                client_id: id.clone()
            }))
        );
        assert_eq!(a.api.store().get_client(&domain, &id).unwrap(), None);
        let r = a.call("DELETE", &path, "");
        assert_eq!((r.status, r.effect), (404, None));
    }

    #[test]
    fn bad_admin_token_is_401_and_changes_nothing() {
        let mut a = Admin::new();
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Basic admintoken"),
            Some("Bearer "),
        ] {
            let r = a.api.handle(
                "POST",
                "/admin/v1/domains",
                auth,
                br#"{"domain":"acme"}"#,
                &NoPresence,
                &mut a.rng,
                NOW,
            );
            assert_eq!(r.status, 401, "{auth:?}");
            assert_eq!(r.headers[0].0, "WWW-Authenticate");
            assert!(error_of(&r).contains("admin token"));
        }
        // Unknown paths are not revealed without the token either.
        let r = a
            .api
            .handle("GET", "/nope", None, b"", &NoPresence, &mut a.rng, NOW);
        assert_eq!(r.status, 401);
        assert!(!a
            .api
            .store()
            .domain_exists(&DomainName::new("acme").unwrap())
            .unwrap());
    }

    #[test]
    fn malformed_bodies_are_400_and_change_nothing() {
        let mut a = Admin::provisioned();
        for (path, body) in [
            ("/admin/v1/domains", "{"),
            ("/admin/v1/domains", ""),
            ("/admin/v1/domains", "[]"),
            ("/admin/v1/domains", r#"{"domain":7}"#),
            ("/admin/v1/domains", r#"{"name":"x"}"#),
            ("/admin/v1/domains/acme/stores", r#"{"store":"s2"}"#),
            // A typo must not create a domain-wide client.
            ("/admin/v1/domains/acme/clients", r#"{"stor":"s1"}"#),
            ("/admin/v1/domains/acme/devices", r#"{"tsn":"1"}"#),
        ] {
            let r = a.call("POST", path, body);
            assert_eq!(r.status, 400, "{path} {body}");
            assert!(
                error_of(&r).starts_with("malformed JSON body"),
                "{}",
                text(&r)
            );
        }
        let r = a.call(
            "PATCH",
            "/admin/v1/domains/acme/devices/12345678",
            r#"{"enabled":"no"}"#,
        );
        assert_eq!(r.status, 400);
        let domain = DomainName::new("acme").unwrap();
        assert!(
            a.api
                .store()
                .get_device(&domain, &Serial::new("12345678").unwrap())
                .unwrap()
                .unwrap()
                .enabled
        );
        assert_eq!(a.api.store().list_devices(&domain).unwrap().len(), 1);
    }

    #[test]
    fn invalid_names_are_400() {
        let mut a = Admin::provisioned();
        let r = a.call("POST", "/admin/v1/domains", r#"{"domain":"a/b"}"#);
        assert_eq!(r.status, 400);
        assert!(error_of(&r).contains("domain may contain only"));
        let r = a.call(
            "POST",
            "/admin/v1/domains/acme/devices",
            r#"{"tsn":"1","make":"in-genico","model":"axium","store":"s1"}"#,
        );
        assert_eq!(r.status, 400);
        let r = a.call(
            "POST",
            "/admin/v1/domains/acme/devices",
            r#"{"tsn":"12-34","make":"ingenico","model":"axium","store":"s1"}"#,
        );
        assert_eq!(r.status, 400);
        let r = a.call("POST", "/admin/v1/domains/acme/clients", r#"{"store":""}"#);
        assert_eq!(r.status, 400);
    }

    #[test]
    fn unknown_domain_store_device_are_404() {
        let mut a = Admin::provisioned();
        for (method, path, body) in [
            (
                "POST",
                "/admin/v1/domains/ghost/stores",
                r#"{"store":"s1","merchant":"m1"}"#,
            ),
            ("POST", "/admin/v1/domains/ghost/clients", "{}"),
            (
                "POST",
                "/admin/v1/domains/ghost/devices",
                r#"{"tsn":"1","make":"a","model":"b","store":"s1"}"#,
            ),
            ("GET", "/admin/v1/domains/ghost/devices", ""),
            (
                "PATCH",
                "/admin/v1/domains/ghost/devices/12345678",
                r#"{"enabled":false}"#,
            ),
            ("DELETE", "/admin/v1/domains/ghost/clients/abc", ""),
            ("GET", "/admin/v1/domains/bad%20name/devices", ""),
        ] {
            let r = a.call(method, path, body);
            assert_eq!(r.status, 404, "{method} {path}");
            assert!(error_of(&r).contains("create it first with POST /admin/v1/domains"));
        }
        let r = a.call(
            "POST",
            "/admin/v1/domains/acme/clients",
            r#"{"store":"s9"}"#,
        );
        assert_eq!(r.status, 404);
        assert!(error_of(&r).contains("unknown store"));
        let r = a.call(
            "POST",
            "/admin/v1/domains/acme/devices",
            r#"{"tsn":"1","make":"a","model":"b","store":"s9"}"#,
        );
        assert_eq!(r.status, 404);
        let r = a.call(
            "PATCH",
            "/admin/v1/domains/acme/devices/999",
            r#"{"enabled":false}"#,
        );
        assert_eq!((r.status, &r.effect), (404, &None));
        assert!(error_of(&r).contains("provision it first"));
    }

    #[test]
    fn duplicates_are_409() {
        let mut a = Admin::provisioned();
        let r = a.call("POST", "/admin/v1/domains", r#"{"domain":"acme"}"#);
        assert_eq!(r.status, 409);
        assert_eq!(
            error_of(&r),
            "domain \"acme\" already exists: nothing was changed"
        );
        let r = a.call(
            "POST",
            "/admin/v1/domains/acme/stores",
            r#"{"store":"s1","merchant":"m2"}"#,
        );
        assert_eq!(r.status, 409);
        let r = a.call(
            "POST",
            "/admin/v1/domains/acme/devices",
            r#"{"tsn":"12345678","make":"verifone","model":"p400","store":"s1"}"#,
        );
        assert_eq!(r.status, 409);
        // Nothing changed: the device is still the ingenico.
        let device = a
            .api
            .store()
            .get_device(
                &DomainName::new("acme").unwrap(),
                &Serial::new("12345678").unwrap(),
            )
            .unwrap()
            .unwrap();
        assert_eq!(device.make.as_str(), "ingenico");
    }

    #[test]
    fn paths_and_methods() {
        let mut a = Admin::provisioned();
        let r = a.call("GET", "/admin/v1/nothing", "");
        assert_eq!(r.status, 404);
        let r = a.call("DELETE", "/admin/v1/domains", "");
        assert_eq!(r.status, 405);
        assert_eq!(r.headers, vec![("Allow", "GET, POST")]);
        let r = a.call("PUT", "/admin/v1/domains/acme/devices", "");
        assert_eq!(
            (r.status, r.headers.clone()),
            (405, vec![("Allow", "GET, POST")])
        );
        // Methods are case-sensitive.
        let r = a.call("post", "/admin/v1/domains", r#"{"domain":"x"}"#);
        assert_eq!(r.status, 405);
    }

    #[test]
    fn patch_accepts_qualified_tsn_with_matching_make_and_model() {
        let mut a = Admin::provisioned();
        let r = a.call(
            "PATCH",
            "/admin/v1/domains/acme/devices/INGENICO-Axium-12345678",
            r#"{"enabled":false}"#,
        );
        assert_eq!(r.status, 200);
        let r = a.call(
            "PATCH",
            "/admin/v1/domains/acme/devices/verifone-axium-12345678",
            r#"{"enabled":true}"#,
        );
        assert_eq!(r.status, 404);
    }

    #[test]
    fn device_list_shows_presence_from_the_relay() {
        struct Live;
        impl DevicePresence for Live {
            fn presence(&self, _: &DomainName, serial: &Serial) -> Presence {
                Presence {
                    online: serial.as_str() == "12345678",
                    claimed_by: Some(ClientId::new("pos1").unwrap()),
                }
            }
        }
        let mut a = Admin::provisioned();
        let r = a.api.handle(
            "GET",
            "/admin/v1/domains/acme/devices",
            AUTH,
            b"",
            &Live,
            &mut a.rng,
            NOW,
        );
        assert_eq!(
            text(&r),
            r#"{"devices":[{"tsn":"12345678","store":"s1","enabled":true,"online":true,"claimed_by":"pos1","client_cert_sha256":[]}]}"#
        );
    }

    const FP_A: &str = "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD";
    const FP_B: &str = "0000000000000000000000000000000000000000000000000000000000000001";

    fn device(a: &Admin, tsn: &str) -> DeviceRecord {
        a.api
            .store()
            .get_device(
                &DomainName::new("acme").unwrap(),
                &Serial::new(tsn).unwrap(),
            )
            .unwrap()
            .unwrap()
    }

    #[test]
    fn pins_are_posted_patched_and_listed_in_lowercase() {
        let mut a = Admin::provisioned();
        let body = format!(
            r#"{{"tsn":"555","make":"verifone","model":"p400","store":"s1","client_cert_sha256":["{FP_A}","{}"]}}"#,
            FP_A.to_ascii_lowercase()
        );
        let r = a.call("POST", "/admin/v1/domains/acme/devices", &body);
        assert_eq!(r.status, 201, "{}", text(&r));
        let lower_a = FP_A.to_ascii_lowercase();
        assert!(
            text(&r).ends_with(&format!(r#""client_cert_sha256":["{lower_a}"]}}"#)),
            "repeats dropped, lowercase: {}",
            text(&r)
        );
        let found = a
            .api
            .store()
            .find_device_by_fingerprint(&CertFingerprint::parse_hex(FP_A).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(found.serial.as_str(), "555");

        // PATCH replaces the list: a rotation pins the new one beside the old...
        let r = a.call(
            "PATCH",
            "/admin/v1/domains/acme/devices/555",
            &format!(r#"{{"client_cert_sha256":["{FP_A}","{FP_B}"]}}"#),
        );
        assert_eq!((r.status, &r.effect), (200, &None), "{}", text(&r));
        let r = a.call("GET", "/admin/v1/domains/acme/devices", "");
        assert!(
            text(&r).contains(&format!(
                r#"{{"tsn":"555","store":"s1","enabled":true,"online":false,"claimed_by":null,"client_cert_sha256":["{lower_a}","{FP_B}"]}}"#
            )),
            "{}",
            text(&r)
        );
        // ...then drops the old: the relay must close a connection made with it.
        let r = a.call(
            "PATCH",
            "/admin/v1/domains/acme/devices/555",
            &format!(r#"{{"client_cert_sha256":["{FP_B}"]}}"#),
        );
        assert_eq!(r.status, 200);
        assert_eq!(
            r.effect,
            Some(AdminEffect::CertPinsRemoved {
                device: device(&a, "555").key(),
                removed: vec![CertFingerprint::parse_hex(FP_A).unwrap()],
            })
        );
        assert!(device(&a, "555").enabled, "pins leave enabled alone");
        // Both at once; disabling closes the connection whatever its certificate.
        let r = a.call(
            "PATCH",
            "/admin/v1/domains/acme/devices/555",
            r#"{"enabled":false,"client_cert_sha256":[]}"#,
        );
        assert_eq!(r.status, 200);
        assert_eq!(
            r.effect,
            Some(AdminEffect::DeviceDisabled(device(&a, "555").key()))
        );
        assert!(device(&a, "555").client_cert_sha256.is_empty());
    }

    #[test]
    fn a_malformed_pin_is_400_and_one_pinned_elsewhere_409_changing_nothing() {
        let mut a = Admin::provisioned();
        let r = a.call(
            "PATCH",
            "/admin/v1/domains/acme/devices/12345678",
            &format!(r#"{{"client_cert_sha256":["{FP_A}"]}}"#),
        );
        assert_eq!(r.status, 200);
        for bad in [
            "abc",
            "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD",
            "zz7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ] {
            let body = format!(
                r#"{{"tsn":"9","make":"a","model":"b","store":"s1","client_cert_sha256":["{FP_B}","{bad}"]}}"#
            );
            let r = a.call("POST", "/admin/v1/domains/acme/devices", &body);
            assert_eq!(r.status, 400, "{bad}");
            assert!(error_of(&r).starts_with("client_cert_sha256[1]:"), "{}", text(&r));
        }
        let r = a.call(
            "PATCH",
            "/admin/v1/domains/acme/devices/12345678",
            r#"{"enabled":false,"client_cert_sha256":[7]}"#,
        );
        assert_eq!(r.status, 400);
        assert!(device(&a, "12345678").enabled, "nothing changed");

        // Pinned to another device, even in another domain: 409, nothing created.
        let r = a.call(
            "POST",
            "/admin/v1/domains/acme/devices",
            &format!(r#"{{"tsn":"9","make":"a","model":"b","store":"s1","client_cert_sha256":["{FP_A}"]}}"#),
        );
        assert_eq!(r.status, 409, "{}", text(&r));
        assert!(error_of(&r).contains("remove it from that device first"));
        assert!(
            !error_of(&r).contains(&FP_A.to_ascii_lowercase()),
            "no fingerprint in answers"
        );
        let r = a.call("GET", "/admin/v1/domains/acme/devices", "");
        assert!(!text(&r).contains(r#""tsn":"9""#));
        // A PATCH of another device that would steal it: 409, its enabled flag untouched.
        let r = a.call(
            "POST",
            "/admin/v1/domains/acme/devices",
            r#"{"tsn":"9","make":"a","model":"b","store":"s1"}"#,
        );
        assert_eq!(r.status, 201);
        let r = a.call(
            "PATCH",
            "/admin/v1/domains/acme/devices/9",
            &format!(r#"{{"enabled":false,"client_cert_sha256":["{FP_A}"]}}"#),
        );
        assert_eq!((r.status, &r.effect), (409, &None));
        assert!(device(&a, "9").enabled);
        // Too many, and a patch that changes nothing.
        let many: Vec<String> = (0..=MAX_PINS_PER_DEVICE)
            .map(|i| format!("\"{i:064x}\""))
            .collect();
        let r = a.call(
            "PATCH",
            "/admin/v1/domains/acme/devices/9",
            &format!(r#"{{"client_cert_sha256":[{}]}}"#, many.join(",")),
        );
        assert_eq!(r.status, 400);
        assert!(error_of(&r).contains("at most 16"));
        let r = a.call("PATCH", "/admin/v1/domains/acme/devices/9", "{}");
        assert_eq!(r.status, 400);
        assert!(error_of(&r).starts_with("nothing to change"));
    }

    #[test]
    fn domains_stores_and_clients_are_listed_and_deleted_when_empty() {
        let mut a = Admin::provisioned();
        let r = a.call("GET", "/admin/v1/domains", "");
        assert_eq!((r.status, text(&r)), (200, r#"{"domains":["acme"]}"#));
        let r = a.call(
            "POST",
            "/admin/v1/domains/acme/clients",
            r#"{"store":"s1"}"#,
        );
        assert_eq!(r.status, 201);
        #[derive(serde::Deserialize)]
        struct Created {
            client_id: String,
            client_secret: String,
        }
        let mut body = r.body.clone();
        let created: Created = simd_json::serde::from_slice(&mut body).unwrap();
        let r = a.call("GET", "/admin/v1/domains/acme/clients", "");
        assert_eq!(r.status, 200);
        assert_eq!(
            text(&r),
            format!(
                r#"{{"clients":[{{"client_id":"{}","store":"s1"}}]}}"#,
                created.client_id
            )
        );
        assert!(!text(&r).contains(&created.client_secret));
        assert!(!text(&r).contains("argon2"), "no hash either");
        let r = a.call("GET", "/admin/v1/domains/acme/stores", "");
        assert_eq!(text(&r), r#"{"stores":[{"store":"s1","merchant":"m1"}]}"#);
        // The store still has a device and a client: refused, saying so.
        let r = a.call("DELETE", "/admin/v1/domains/acme/stores/s1", "");
        assert_eq!(r.status, 409);
        assert_eq!(
            error_of(&r),
            r#"store "s1" in domain "acme" still has 1 client, 1 device: delete those first; nothing was deleted"#
        );
        let r = a.call("DELETE", "/admin/v1/domains/acme", "");
        assert_eq!(r.status, 409);
        // An empty domain goes.
        a.call("POST", "/admin/v1/domains", r#"{"domain":"empty"}"#);
        let r = a.call("DELETE", "/admin/v1/domains/empty", "");
        assert_eq!((r.status, r.body.len()), (204, 0));
        let r = a.call("DELETE", "/admin/v1/domains/empty", "");
        assert_eq!(r.status, 404);
        let r = a.call("DELETE", "/admin/v1/domains/acme/stores/nope", "");
        assert_eq!(r.status, 404);
    }

    #[test]
    fn a_rotated_secret_keeps_the_old_one_for_its_grace() {
        let mut a = Admin::provisioned();
        let r = a.call("POST", "/admin/v1/domains/acme/clients", "{}");
        #[derive(serde::Deserialize)]
        struct Created {
            client_id: String,
            client_secret: String,
        }
        let mut body = r.body.clone();
        let old: Created = simd_json::serde::from_slice(&mut body).unwrap();
        let path = format!("/admin/v1/domains/acme/clients/{}/secret", old.client_id);
        let r = a.call("POST", &path, r#"{"grace_seconds":3600}"#);
        assert_eq!(r.status, 200, "{}", text(&r));
        #[derive(serde::Deserialize)]
        struct Rotated {
            client_id: String,
            client_secret: String,
            previous_secret_valid_until: u64,
        }
        let mut body = r.body.clone();
        let new: Rotated = simd_json::serde::from_slice(&mut body).unwrap();
        assert_eq!(new.client_id, old.client_id);
        assert_ne!(new.client_secret, old.client_secret);
        assert_eq!(new.previous_secret_valid_until, NOW + 3600);
        let domain = DomainName::new("acme").unwrap();
        let id = ClientId::new(old.client_id.as_str()).unwrap();
        assert_eq!(
            r.effect,
            Some(AdminEffect::ClientSecretRotated(ClientKey {
                domain: domain.clone(),
                client_id: id.clone()
            }))
        );
        let record = a.api.store().get_client(&domain, &id).unwrap().unwrap();
        let hasher = &a.api.hasher;
        assert!(hasher.verify_secret(&record.secret_hash, new.client_secret.as_bytes()));
        let previous = record.previous_secret.unwrap();
        assert!(hasher.verify_secret(&previous.hash, old.client_secret.as_bytes()));
        // No body: a day's grace. Unknown client: 404. A bad body: 400.
        let r = a.call("POST", &path, "");
        assert_eq!(r.status, 200);
        let r = a.call("POST", "/admin/v1/domains/acme/clients/nobody/secret", "{}");
        assert_eq!(r.status, 404);
        let r = a.call("POST", &path, r#"{"grace":"1h"}"#);
        assert_eq!(r.status, 400);
    }

    #[test]
    fn oversized_body_is_413() {
        let mut a = Admin::new();
        let big = format!(
            r#"{{"domain":"{}"}}"#,
            "a".repeat(crate::admin::MAX_ADMIN_BODY)
        );
        let r = a.call("POST", "/admin/v1/domains", &big);
        assert_eq!(r.status, 413);
    }
}
