//! Issue "Tenancy": the §9 admin API, `/healthz` and `/metrics`, the §1 token endpoint,
//! and what survives a `kill -9` (§6, §9), tested against the real binary.

mod common;

use common::*;
use serde_json::{json, Value};

const TSN: &str = "12345678";

/// Every §9 call, as (method, path, body).
fn every_admin_call(client_id: &str) -> Vec<(&'static str, String, Option<Value>)> {
    vec![
        (
            "POST",
            "/admin/v1/domains".into(),
            Some(json!({"domain": "evil"})),
        ),
        (
            "POST",
            "/admin/v1/domains/acme/stores".into(),
            Some(json!({"store": "s2", "merchant": "m1"})),
        ),
        (
            "POST",
            "/admin/v1/domains/acme/clients".into(),
            Some(json!({"store": "s1"})),
        ),
        (
            "DELETE",
            format!("/admin/v1/domains/acme/clients/{client_id}"),
            None,
        ),
        (
            "POST",
            "/admin/v1/domains/acme/devices".into(),
            Some(json!({"tsn": "87654321", "make": "ingenico", "model": "axium", "store": "s1"})),
        ),
        (
            "PATCH",
            format!("/admin/v1/domains/acme/devices/{TSN}"),
            Some(json!({"enabled": false})),
        ),
        ("GET", "/admin/v1/domains/acme/devices".into(), None),
    ]
}

fn device_row(tsn: &str, store: &str, enabled: bool, online: bool, claimed_by: Value) -> Value {
    json!({"tsn": tsn, "store": store, "enabled": enabled, "online": online, "claimed_by": claimed_by, "client_cert_sha256": []})
}

#[test]
fn admin_calls_without_the_admin_token_answer_401_and_change_nothing() {
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let wrong_prefix = format!(
        "Bearer {}",
        &relay.admin_token[..relay.admin_token.len() - 1]
    );
    let wrong_suffix = format!("Bearer {}x", relay.admin_token);
    let basic = basic_auth("admin", &relay.admin_token);
    let bad_auths: Vec<Option<&str>> = vec![
        None,
        Some("Bearer wrong"),
        Some(wrong_prefix.as_str()),
        Some(wrong_suffix.as_str()),
        Some(basic.as_str()),
        Some("Bearer"),
    ];
    for (method, path, body) in every_admin_call(&creds.client_id) {
        for auth in &bad_auths {
            let text = body.as_ref().map(|b| b.to_string());
            let mut headers = vec![("Content-Type", "application/json")];
            if let Some(a) = auth {
                headers.push(("Authorization", a));
            }
            let r = relay.http(method, &relay.admin_url(&path), &headers, text.as_deref());
            let what = format!("{method} {path} with Authorization {auth:?}");
            r.expect_error(401, &what);
            // RFC 6750 §3: a 401 from a bearer-protected resource carries WWW-Authenticate.
            let challenge = r.header("www-authenticate").unwrap_or("");
            assert!(
                challenge.starts_with("Bearer"),
                "{what}: WWW-Authenticate {challenge:?}"
            );
        }
    }
    // Nothing changed: the domain "evil" and store "s2" can still be created, the client
    // still logs in, the device list is as provisioned, and device 87654321 does not exist.
    relay.create_domain("evil");
    relay.create_store("acme", "s2", "m1");
    relay.token("acme", &creds);
    assert_eq!(
        relay.admin_devices("acme"),
        vec![device_row(TSN, "s1", true, false, Value::Null)]
    );
}

#[test]
fn admin_provisioning_calls_answer_as_specified() {
    let relay = Relay::start(&[]);
    let r = relay.admin("POST", "/admin/v1/domains", Some(json!({"domain": "acme"})));
    r.expect_status(201, "create domain");
    let r = relay.admin(
        "POST",
        "/admin/v1/domains/acme/stores",
        Some(json!({"store": "s1", "merchant": "m1"})),
    );
    r.expect_status(201, "create store");

    // A store client and a domain-wide client: 201 with a JSON body of two strings.
    let r = relay.admin(
        "POST",
        "/admin/v1/domains/acme/clients",
        Some(json!({"store": "s1"})),
    );
    r.expect_status(201, "create store client");
    let ct = r.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with("application/json"),
        "client answer content-type {ct:?}"
    );
    let store_client = r.json();
    let r = relay.admin("POST", "/admin/v1/domains/acme/clients", Some(json!({})));
    r.expect_status(201, "create domain-wide client");
    let domain_client = r.json();
    for c in [&store_client, &domain_client] {
        let obj = c
            .as_object()
            .unwrap_or_else(|| panic!("client answer is an object: {c}"));
        let mut keys: Vec<&String> = obj.keys().collect();
        keys.sort();
        assert_eq!(keys, ["client_id", "client_secret"], "client answer: {c}");
        assert!(c["client_id"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(
            c["client_secret"].as_str().is_some_and(|s| s.len() >= 16),
            "secret too short: {c}"
        );
    }
    assert_ne!(store_client["client_id"], domain_client["client_id"]);
    assert_ne!(
        store_client["client_secret"],
        domain_client["client_secret"]
    );

    let r = relay.admin(
        "POST",
        "/admin/v1/domains/acme/devices",
        Some(json!({"tsn": TSN, "make": "ingenico", "model": "axium", "store": "s1"})),
    );
    r.expect_status(201, "create device");

    let r = relay.admin("GET", "/admin/v1/domains/acme/devices", None);
    r.expect_status(200, "list devices");
    let ct = r.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with("application/json"),
        "list content-type {ct:?}"
    );
    assert_eq!(
        r.json(),
        json!({"devices": [device_row(TSN, "s1", true, false, Value::Null)]}),
        "the §9 listing, exactly"
    );

    let r = relay.admin(
        "PATCH",
        &format!("/admin/v1/domains/acme/devices/{TSN}"),
        Some(json!({"enabled": false})),
    );
    r.expect_status(200, "disable device");
    assert_eq!(
        relay.admin_devices("acme"),
        vec![device_row(TSN, "s1", false, false, Value::Null)]
    );
    let r = relay.admin(
        "PATCH",
        &format!("/admin/v1/domains/acme/devices/{TSN}"),
        Some(json!({"enabled": true})),
    );
    r.expect_status(200, "enable device");
    assert_eq!(
        relay.admin_devices("acme"),
        vec![device_row(TSN, "s1", true, false, Value::Null)]
    );

    // The listing reflects the relay: online once connected, claimed_by the claiming client.
    let creds = Creds {
        client_id: store_client["client_id"].as_str().unwrap().into(),
        client_secret: store_client["client_secret"].as_str().unwrap().into(),
    };
    let _device = Device::register_and_connect(&relay, TSN, &creds);
    let token = relay.token("acme", &creds);
    let mut pos = Pos::control(&relay, &token);
    pos.claim_ok(TSN);
    let listed = wait_for(std::time::Duration::from_secs(5), || {
        let l = relay.admin_devices("acme");
        (l[0]["online"] == true && l[0]["claimed_by"] == creds.client_id.as_str()).then_some(l)
    });
    assert_eq!(
        listed.unwrap_or_else(|| relay.admin_devices("acme")),
        vec![device_row(TSN, "s1", true, true, json!(creds.client_id))]
    );

    let r = relay.admin(
        "DELETE",
        &format!(
            "/admin/v1/domains/acme/clients/{}",
            domain_client["client_id"].as_str().unwrap()
        ),
        None,
    );
    r.expect_status(204, "delete client");
    assert!(r.body.is_empty(), "204 has no body: {:?}", r.body);
    let r = relay.admin(
        "DELETE",
        &format!(
            "/admin/v1/domains/acme/clients/{}",
            domain_client["client_id"].as_str().unwrap()
        ),
        None,
    );
    r.expect_error(404, "delete a deleted client");
}

#[test]
fn admin_malformed_bodies_answer_400_and_change_nothing() {
    let relay = Relay::start(&[]);
    let _creds = relay.provision("acme", "s1", &[TSN]);
    let cases: Vec<(&str, String, &str)> = vec![
        ("POST", "/admin/v1/domains".into(), "not json"),
        ("POST", "/admin/v1/domains".into(), "{}"),
        ("POST", "/admin/v1/domains".into(), r#"{"domain": 5}"#),
        ("POST", "/admin/v1/domains".into(), r#"{"domain": "x""#),
        ("POST", "/admin/v1/domains".into(), ""),
        (
            "POST",
            "/admin/v1/domains/acme/stores".into(),
            r#"{"merchant": "m1"}"#,
        ),
        ("POST", "/admin/v1/domains/acme/stores".into(), r#"["s2"]"#),
        (
            "POST",
            "/admin/v1/domains/acme/clients".into(),
            r#"{"store": 1}"#,
        ),
        ("POST", "/admin/v1/domains/acme/clients".into(), "nope"),
        (
            "POST",
            "/admin/v1/domains/acme/devices".into(),
            r#"{"make": "ingenico", "model": "axium", "store": "s1"}"#,
        ),
        (
            "POST",
            "/admin/v1/domains/acme/devices".into(),
            r#"{"tsn": 87654321, "make": "ingenico", "model": "axium", "store": "s1"}"#,
        ),
        ("POST", "/admin/v1/domains/acme/devices".into(), "{{{"),
        (
            "PATCH",
            format!("/admin/v1/domains/acme/devices/{TSN}"),
            r#"{"enabled": "no"}"#,
        ),
        (
            "PATCH",
            format!("/admin/v1/domains/acme/devices/{TSN}"),
            "enabled=false",
        ),
    ];
    let auth = format!("Bearer {}", relay.admin_token);
    for (method, path, body) in &cases {
        let r = relay.http(
            method,
            &relay.admin_url(path),
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            Some(body),
        );
        r.expect_error(400, &format!("{method} {path} with body {body:?}"));
    }
    // Nothing changed.
    assert_eq!(
        relay.admin_devices("acme"),
        vec![device_row(TSN, "s1", true, false, Value::Null)]
    );
    relay.create_store("acme", "s2", "m1");
}

#[test]
fn admin_unknown_domain_answers_404_and_unknown_store_is_refused() {
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let calls: Vec<(&str, String, Option<Value>)> = vec![
        (
            "POST",
            "/admin/v1/domains/nope/stores".into(),
            Some(json!({"store": "s1", "merchant": "m1"})),
        ),
        (
            "POST",
            "/admin/v1/domains/nope/clients".into(),
            Some(json!({"store": "s1"})),
        ),
        (
            "POST",
            "/admin/v1/domains/nope/clients".into(),
            Some(json!({})),
        ),
        (
            "DELETE",
            format!("/admin/v1/domains/nope/clients/{}", creds.client_id),
            None,
        ),
        (
            "POST",
            "/admin/v1/domains/nope/devices".into(),
            Some(json!({"tsn": TSN, "make": "ingenico", "model": "axium", "store": "s1"})),
        ),
        (
            "PATCH",
            format!("/admin/v1/domains/nope/devices/{TSN}"),
            Some(json!({"enabled": false})),
        ),
        ("GET", "/admin/v1/domains/nope/devices".into(), None),
        // Unknown things below a known domain are 404 too.
        (
            "PATCH",
            "/admin/v1/domains/acme/devices/99999999".into(),
            Some(json!({"enabled": false})),
        ),
        (
            "DELETE",
            "/admin/v1/domains/acme/clients/no-such-client".into(),
            None,
        ),
    ];
    for (method, path, body) in calls {
        relay
            .admin(method, &path, body)
            .expect_error(404, &format!("{method} {path}"));
    }
    // A client or device in a store that does not exist is refused (4xx, JSON error).
    for (path, body) in [
        ("/admin/v1/domains/acme/clients", json!({"store": "s9"})),
        (
            "/admin/v1/domains/acme/devices",
            json!({"tsn": "87654321", "make": "ingenico", "model": "axium", "store": "s9"}),
        ),
    ] {
        let r = relay.admin("POST", path, Some(body.clone()));
        assert!(
            (400..500).contains(&r.status),
            "{path} {body}: status {} {:?}",
            r.status,
            r.body
        );
        r.expect_error(r.status, path);
    }
    // Nothing changed: the DELETE of the real client id under "nope" did not delete it,
    // the PATCH under "nope" did not disable the device, no device 87654321 appeared.
    relay.token("acme", &creds);
    assert_eq!(
        relay.admin_devices("acme"),
        vec![device_row(TSN, "s1", true, false, Value::Null)]
    );
    // An unknown admin path is 404.
    relay
        .admin("GET", "/admin/v1/nothing-here", None)
        .expect_status(404, "unknown admin path");
}

#[test]
fn admin_duplicates_answer_409_and_change_nothing() {
    let relay = Relay::start(&[]);
    let _creds = relay.provision("acme", "s1", &[TSN]);
    relay.create_store("acme", "s2", "m2");
    relay
        .admin("POST", "/admin/v1/domains", Some(json!({"domain": "acme"})))
        .expect_error(409, "duplicate domain");
    relay
        .admin(
            "POST",
            "/admin/v1/domains/acme/stores",
            Some(json!({"store": "s1", "merchant": "m9"})),
        )
        .expect_error(409, "duplicate store");
    relay
        .admin(
            "POST",
            "/admin/v1/domains/acme/devices",
            Some(json!({"tsn": TSN, "make": "verifone", "model": "p400", "store": "s2"})),
        )
        .expect_error(409, "duplicate device");
    // The first device is unchanged: still in s1 (and still ingenico/axium: registration
    // with the fully qualified name of the first provisioning works).
    assert_eq!(
        relay.admin_devices("acme"),
        vec![device_row(TSN, "s1", true, false, Value::Null)]
    );
    let creds = relay.create_client("acme", Some("s1"));
    register(&relay, &format!("ingenico-axium-{TSN}"), &creds);
    // Names are per domain: another domain may have a store "s1".
    relay.create_domain("globex");
    relay.create_store("globex", "s1", "m1");
}

#[test]
fn healthz_and_metrics_answer_without_auth() {
    let relay = Relay::start(&[]);
    let r = relay.http("GET", &relay.admin_url("/healthz"), &[], None);
    r.expect_status(200, "healthz");
    let r = relay.http("GET", &relay.admin_url("/metrics"), &[], None);
    r.expect_status(200, "metrics");
    let ct = r.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with("text/plain"),
        "Prometheus text content-type, got {ct:?}"
    );
    let samples = parse_metrics(&r.body);
    assert!(
        r.body.contains("# TYPE posrelay_connections gauge"),
        "metrics: {}",
        r.body
    );
    let devices = connections_by_shard(&samples, "device");
    assert_eq!(
        devices.len(),
        2,
        "one device gauge per shard (--shards 2): {}",
        r.body
    );
    assert!(
        devices.values().all(|v| *v == 0.0),
        "no device connected yet: {devices:?}"
    );
    // Auth headers are not required but do no harm.
    let r = relay.http(
        "GET",
        &relay.admin_url("/healthz"),
        &[("Authorization", "Bearer wrong")],
        None,
    );
    r.expect_status(200, "healthz with a wrong token");
}

fn token_ok(r: &HttpResp, ttl: u64) -> String {
    r.expect_status(200, "token");
    let ct = r.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with("application/json"),
        "token content-type {ct:?}"
    );
    // RFC 6749 §5.1: the answer carries Cache-Control: no-store.
    assert_eq!(
        r.header("cache-control"),
        Some("no-store"),
        "RFC 6749 §5.1 Cache-Control"
    );
    let v = r.json();
    let mut keys: Vec<&String> = v.as_object().expect("object").keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        ["access_token", "expires_in", "token_type"],
        "token answer: {v}"
    );
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(
        v["expires_in"],
        json!(ttl),
        "expires_in = --access-token-ttl"
    );
    v["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

#[test]
fn token_endpoint_issues_jwts_by_basic_or_body_credentials() {
    let relay = Relay::start(&["--access-token-ttl", "2m"]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let domain_creds = relay.create_client("acme", None);
    let basic = basic_auth(&creds.client_id, &creds.client_secret);
    let r = relay.token_request(
        "acme",
        &[("Authorization", &basic)],
        "grant_type=client_credentials",
    );
    let t1 = token_ok(&r, 120);
    let body = format!(
        "grant_type=client_credentials&client_id={}&client_secret={}",
        form_encode(&creds.client_id),
        form_encode(&creds.client_secret)
    );
    let r = relay.token_request("acme", &[], &body);
    let t2 = token_ok(&r, 120);
    let r = relay.token_request(
        "acme",
        &[(
            "Authorization",
            &basic_auth(&domain_creds.client_id, &domain_creds.client_secret),
        )],
        "grant_type=client_credentials",
    );
    let t3 = token_ok(&r, 120);

    let now = unix_now();
    for (token, client) in [
        (&t1, &creds.client_id),
        (&t2, &creds.client_id),
        (&t3, &domain_creds.client_id),
    ] {
        let claims = jwt_claims(token);
        let values: Vec<&Value> = claims
            .as_object()
            .expect("claims object")
            .values()
            .collect();
        assert!(
            values.iter().any(|v| **v == "acme"),
            "a claim names the domain: {claims}"
        );
        assert!(
            values.iter().any(|v| *v == client),
            "a claim names the client: {claims}"
        );
        assert!(
            claims
                .get("aud")
                .is_some_and(|a| a.is_string() || a.is_array()),
            "aud: {claims}"
        );
        let exp = claims["exp"]
            .as_u64()
            .unwrap_or_else(|| panic!("numeric exp: {claims}"));
        assert!(
            exp >= now + 120 - 30 && exp <= now + 120 + 30,
            "exp {exp} is about now+120 ({now})"
        );
        // The token is accepted where an access token belongs.
        let mut pos = Pos::control(&relay, token);
        let d = pos.devices();
        assert_eq!(d["type"], "devices", "{d}");
    }
    // The store client's and the domain-wide client's tokens differ in scope.
    assert_ne!(jwt_claims(&t1), jwt_claims(&t3));
}

#[test]
fn token_endpoint_errors_follow_rfc_6749() {
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    relay.create_domain("globex");
    let good_basic = basic_auth(&creds.client_id, &creds.client_secret);
    let bad_basic = basic_auth(&creds.client_id, "wrong-secret");
    let unknown_basic = basic_auth("no-such-client", &creds.client_secret);
    let body_creds = format!(
        "client_id={}&client_secret={}",
        form_encode(&creds.client_id),
        form_encode(&creds.client_secret)
    );
    struct Case<'a> {
        what: &'a str,
        domain: &'a str,
        auth: Option<&'a str>,
        form: String,
        status: u16,
        error: &'a str,
    }
    let cases = vec![
        Case {
            what: "credentials both in Basic and in the body",
            domain: "acme",
            auth: Some(&good_basic),
            form: format!("grant_type=client_credentials&{body_creds}"),
            status: 400,
            error: "invalid_request",
        },
        Case {
            what: "wrong grant type with good credentials",
            domain: "acme",
            auth: Some(&good_basic),
            form: "grant_type=password".into(),
            status: 400,
            error: "unsupported_grant_type",
        },
        Case {
            what: "wrong grant type is checked first (bad credentials)",
            domain: "acme",
            auth: Some(&bad_basic),
            form: "grant_type=authorization_code".into(),
            status: 400,
            error: "unsupported_grant_type",
        },
        Case {
            what: "wrong grant type is checked first (unknown domain, no credentials)",
            domain: "nope",
            auth: None,
            form: "grant_type=password".into(),
            status: 400,
            error: "unsupported_grant_type",
        },
        Case {
            what: "missing grant_type",
            domain: "acme",
            auth: Some(&good_basic),
            form: String::new(),
            status: 400,
            error: "invalid_request",
        },
        Case {
            what: "missing grant_type, body credentials",
            domain: "acme",
            auth: None,
            form: body_creds.clone(),
            status: 400,
            error: "invalid_request",
        },
        Case {
            what: "wrong secret (Basic)",
            domain: "acme",
            auth: Some(&bad_basic),
            form: "grant_type=client_credentials".into(),
            status: 401,
            error: "invalid_client",
        },
        Case {
            what: "wrong secret (body)",
            domain: "acme",
            auth: None,
            form: format!(
                "grant_type=client_credentials&client_id={}&client_secret=wrong",
                form_encode(&creds.client_id)
            ),
            status: 401,
            error: "invalid_client",
        },
        Case {
            what: "unknown client",
            domain: "acme",
            auth: Some(&unknown_basic),
            form: "grant_type=client_credentials".into(),
            status: 401,
            error: "invalid_client",
        },
        Case {
            what: "unknown domain",
            domain: "nope",
            auth: Some(&good_basic),
            form: "grant_type=client_credentials".into(),
            status: 401,
            error: "invalid_client",
        },
        Case {
            what: "a client of another domain",
            domain: "globex",
            auth: Some(&good_basic),
            form: "grant_type=client_credentials".into(),
            status: 401,
            error: "invalid_client",
        },
        Case {
            what: "no credentials",
            domain: "acme",
            auth: None,
            form: "grant_type=client_credentials".into(),
            status: 401,
            error: "invalid_client",
        },
    ];
    for c in &cases {
        let headers: Vec<(&str, &str)> = c
            .auth
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        let r = relay.token_request(c.domain, &headers, &c.form);
        let error = r.expect_error(c.status, c.what);
        assert_eq!(error, c.error, "{}: body {}", c.what, r.body);
        if c.status == 401 && c.auth.is_some() {
            // RFC 6749 §5.2: a client that tried Basic gets WWW-Authenticate: Basic.
            let challenge = r.header("www-authenticate").unwrap_or("");
            assert!(
                challenge.starts_with("Basic"),
                "{}: WWW-Authenticate {challenge:?}",
                c.what
            );
        }
    }
    // The good credentials still work afterwards (no lock-out, nothing changed).
    relay.token("acme", &creds);
}

#[test]
fn deleted_client_tokens_stop_working() {
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let other = relay.create_client("acme", Some("s1"));
    let token = relay.token("acme", &creds);
    let other_token = relay.token("acme", &other);
    let auth = format!("Bearer {token}");
    assert_eq!(
        relay.ws_status(&relay.ws_url(POS_LISTENER), &[("Authorization", &auth)]),
        101
    );
    relay.delete_client("acme", &creds.client_id);
    let resp = relay.ws_refused(&relay.ws_url(POS_LISTENER), &[("Authorization", &auth)]);
    assert_eq!(
        resp.status().as_u16(),
        401,
        "a deleted client's token is refused"
    );
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap_or(""));
    assert!(
        challenge.is_some_and(|c| c.starts_with("Bearer")),
        "§8: WWW-Authenticate: Bearer"
    );
    let basic = basic_auth(&creds.client_id, &creds.client_secret);
    let r = relay.token_request(
        "acme",
        &[("Authorization", &basic)],
        "grant_type=client_credentials",
    );
    assert_eq!(
        r.expect_error(401, "token for a deleted client"),
        "invalid_client"
    );
    // A deleted client's credentials no longer register devices either (§2).
    let msg = json!({"type": "register", "tsn": TSN, "client_id": creds.client_id, "client_secret": creds.client_secret});
    let (reply, code) = register_raw(&relay, &msg.to_string());
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "invalid_client", "{reply}");
    assert_eq!(code, 1008);
    // The other client of the same store is unaffected.
    let mut pos = Pos::control(&relay, &other_token);
    assert_eq!(pos.devices()["type"], "devices");
}

#[test]
fn provisioning_and_signing_key_survive_kill_9() {
    let mut relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    relay.create_device("acme", "87654321", "s1");
    let old_token = relay.token("acme", &creds);
    let old_session_id = register(&relay, TSN, &creds).session_id;
    // The last admin calls; the relay is killed the moment they answered.
    relay.set_device_enabled("acme", "87654321", false);
    let late = relay.create_client("acme", None);
    relay.kill_9();
    relay.restart_same_data_dir();

    // Both clients log in with the same secrets.
    relay.token("acme", &creds);
    let late_token = relay.token("acme", &late);
    // The old access token still works on the pos-listener: the signing key survived.
    let mut pos = Pos::control(&relay, &old_token);
    let r = pos.claim(TSN);
    // The device is still provisioned (not not_found) but has not registered since the restart.
    assert_error(&r, None, "offline");
    let mut pos2 = Pos::control(&relay, &late_token);
    assert_error(&pos2.claim("87654321"), None, "offline");
    assert_eq!(
        relay.admin_devices("acme"),
        vec![
            device_row(TSN, "s1", true, false, Value::Null),
            device_row("87654321", "s1", false, false, Value::Null),
        ]
    );
    // Registration works with the old credentials after the restart, and the device keeps
    // its session_id: the key that derives it is stored (reliable claims keep theirs, §11).
    let device = Device::register_and_connect(&relay, TSN, &creds);
    assert_eq!(device.reg.session_id, old_session_id);
    let (sid, _url) = pos.claim_ok(TSN);
    assert_eq!(sid, old_session_id);
}

#[test]
fn http_connections_are_reusable_unless_closed() {
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let form = "grant_type=client_credentials";
    let token_req = |auth: &str| {
        format!(
            "POST /oauth2/v1/acme/token HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        )
    };
    let good = token_req(&basic_auth(&creds.client_id, &creds.client_secret));
    let bad = token_req(&basic_auth(&creds.client_id, "wrong"));
    let statuses = assert_connection_semantics(relay.relay_addr, good.as_bytes(), "token 200");
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let statuses = assert_connection_semantics(relay.relay_addr, bad.as_bytes(), "token 401");
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    let admin = format!(
        "GET /admin/v1/domains/acme/devices HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        relay.admin_token
    );
    let statuses = assert_connection_semantics(relay.admin_addr, admin.as_bytes(), "admin list");
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let health = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let statuses = assert_connection_semantics(relay.admin_addr, health.as_bytes(), "healthz");
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
}
