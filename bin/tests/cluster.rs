//! PROTOCOL.md §12 from outside: three real nats-server processes with JetStream and
//! posrelay nodes started with `--cluster` on loopback, driven as an operator and their
//! clients would. Each test starts its own servers and nodes (distinct ports) and stops
//! exactly those, by pid, when it ends; every wait is bounded.

mod common;
use common::*;
use posrelay_core::cluster::testing::NatsCluster;
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};
use tungstenite::Message;

/// Leases short enough that a lost one is noticed within a test's bounds.
const LEASE_TTL: &str = "3s";

/// How long a node may take to notice its NATS server went away and reconnect, or to
/// notice the cluster is gone (two missed pings at 2 s, reconnect attempts), and to get
/// it back (JetStream elects its leaders again, the lease is acquired again).
const CLUSTER_CHANGE: Duration = Duration::from_secs(40);

struct Cluster {
    // Nodes drop (stop) before the NATS servers they talk to.
    nodes: Vec<Relay>,
    nats: NatsCluster,
}

/// Three NATS servers and `n` posrelay nodes named a, b, c…, one shard each, each with
/// its `--node-url` (its own relay port, picked free beforehand), leases of [`LEASE_TTL`].
fn cluster(n: usize) -> Cluster {
    cluster_with(n, LEASE_TTL)
}

/// [`cluster`] with leases of `lease_ttl`.
fn cluster_with(n: usize, lease_ttl: &str) -> Cluster {
    cluster_args(n, lease_ttl, &[])
}

/// [`cluster_with`], each node given `extra` arguments too.
fn cluster_args(n: usize, lease_ttl: &str, extra: &[&str]) -> Cluster {
    let nats = NatsCluster::start(3);
    let urls = nats.client_urls().join(",");
    let nodes = (0..n)
        .map(|i| {
            let id = ((b'a' + i as u8) as char).to_string();
            let listen = format!("127.0.0.1:{}", free_port());
            let node_url = format!("ws://{listen}");
            let mut args = vec![
                "--cluster",
                &urls,
                "--node-id",
                &id,
                "--node-url",
                &node_url,
                "--listen",
                &listen,
                "--lease-ttl",
                lease_ttl,
                "--shards",
                "1",
            ];
            args.extend_from_slice(extra);
            let node = Relay::start(&args);
            assert_eq!(node.relay_addr.to_string(), listen);
            node
        })
        .collect();
    Cluster { nodes, nats }
}

/// The value of the unlabelled series `name` (panics if absent).
fn metric(text: &str, name: &str) -> f64 {
    parse_metrics(text)
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
        .value
}

/// Whether every thread of `pid` is stopped (state `T` in `/proc/<pid>/task/*/stat`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat"))
            .ok()
            .and_then(|stat| {
                // `pid (comm) S …`: the state follows the last ')'.
                let rest = &stat[stat.rfind(')')? + 1..];
                rest.split_whitespace().next().map(|state| state == "T")
            })
            .unwrap_or(false)
    })
}

fn healthz(node: &Relay) -> HttpResp {
    node.http("GET", &node.admin_url("/healthz"), &[], None)
}

/// The NATS server (index) node `name`'s connection is on, from the servers' `/connz`.
fn server_of(nats: &NatsCluster, name: &str) -> Option<usize> {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(2))
        .build();
    (0..nats.len()).find(|&i| {
        nats.pid(i).is_some()
            && agent
                .get(&format!("{}/connz", nats.monitor_url(i)))
                .call()
                .ok()
                .and_then(|r| r.into_string().ok())
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .and_then(|v| v["connections"].as_array().cloned())
                .is_some_and(|conns| conns.iter().any(|c| c["name"] == name))
    })
}

/// §12: "an admin call answered by any node is durable when it answers … and holds on
/// every node"; "a token from one node works on another"; `session_id`s are the
/// cluster's.
#[test]
fn provisioning_through_one_node_holds_on_the_others_at_once() {
    let c = cluster(3);
    let (a, b, node_c) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    for node in &c.nodes {
        let h = healthz(node);
        assert_eq!(h.status, 200, "healthz: {}", h.body);
        assert!(h.body.contains("nats: connected"), "{}", h.body);
        assert!(h.body.contains("lease: held"), "{}", h.body);
    }

    // Provisioned through a, used at once on b and c (no waiting between the calls).
    let creds = a.provision("acme.com", "store-1", &["1001"]);
    let token = b.token("acme.com", &creds);
    let reg = register(node_c, "1001", &creds);

    // Uniqueness is the cluster's: the device a created cannot be created again through c.
    let again = node_c.admin(
        "POST",
        "/admin/v1/domains/acme.com/devices",
        Some(json!({ "tsn": "1001", "make": "ingenico", "model": "axium", "store": "store-1" })),
    );
    assert_eq!(
        again.status, 409,
        "duplicate device through another node: {}",
        again.body
    );
    // And b lists what a provisioned.
    let listed = b.admin_devices("acme.com");
    assert!(
        listed.iter().any(|d| d["tsn"] == "1001"),
        "b lists the device a provisioned: {listed:?}"
    );

    // The session key is the cluster's: registering through a gives the same session_id.
    let reg_a = register(a, "1001", &creds);
    assert_eq!(
        reg_a.session_id, reg.session_id,
        "one session_id per device across nodes"
    );

    // The token b signed opens a control channel on c; the device registered on c
    // connects there and the two exchange messages, verbatim.
    let mut device = Device::connect(node_c, reg);
    let mut pos = Pos::control(node_c, &token);
    let (session_id, session_url) = pos.claim_ok("1001");
    assert_eq!(session_id, device.reg.session_id);
    let mut session = Pos::session(node_c, &session_url, &token);
    send_text(&mut session, "ping from the POS");
    match device.recv() {
        Message::Text(t) => assert_eq!(t, "ping from the POS"),
        other => panic!("device got {}", show(&other)),
    }
    device.send_binary(&[0, 1, 2, 255]);
    match recv(&mut session) {
        Message::Binary(b) => assert_eq!(b.as_slice(), &[0, 1, 2, 255]),
        other => panic!("POS got {}", show(&other)),
    }

    // The metrics say the node is in its cluster.
    let metrics = b.metrics();
    assert_eq!(
        metric(&metrics, "posrelay_cluster_connected"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "posrelay_cluster_lease_held"),
        1.0,
        "{metrics}"
    );
}

/// §12: the NATS server a node is connected to dies: the node reconnects to another and
/// keeps serving. All of them gone: the node keeps its open connections relaying, refuses
/// registrations and claims with 503 (and `unavailable` on a control channel) and says so
/// in `/healthz` and its log; when NATS is back, so is the node.
#[test]
fn a_node_rides_out_the_loss_of_its_nats_server_and_of_all_of_them() {
    // The default lease: losing one server makes JetStream elect new stream leaders,
    // which a 3 s lease may not outlive (the node would rightly fence itself).
    let mut c = cluster_with(1, "6s");
    let creds = c.nodes[0].provision("acme.com", "store-1", &["1001", "1002"]);
    let token = c.nodes[0].token("acme.com", &creds);
    let mut pair = Pair::connect(&c.nodes[0], "acme.com", "1001", &creds);
    pair.exchange_text("before");

    // The server the node is on dies: the node reconnects to one of the others.
    let on = server_of(&c.nats, "posrelay a").expect("node a is connected to one server");
    c.nats.kill(on);
    let node = &c.nodes[0];
    let reconnected = wait_for(CLUSTER_CHANGE, || {
        let m = node.metrics();
        (metric(&m, "posrelay_cluster_connections_total") >= 2.0
            && metric(&m, "posrelay_cluster_connected") == 1.0)
            .then_some(())
    });
    assert!(
        reconnected.is_some(),
        "node a did not reconnect to another NATS server: {}",
        node.metrics()
    );
    let moved = server_of(&c.nats, "posrelay a").expect("node a is connected again");
    assert_ne!(moved, on);
    // It keeps serving what needs the cluster: a registration, a claim.
    let reg = wait_for(CLUSTER_CHANGE, || {
        let (reply, _) = try_register(node, "1002", &creds)?;
        Some(reply)
    })
    .unwrap_or_else(|| node.fail("registration after a NATS server was lost"));
    assert_eq!(reg["type"], "registered", "{reg}");
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pair.exchange_text("after one server died")
    }))
    .is_err()
    {
        node.fail("the open session broke when one NATS server died");
    }

    // Every server gone.
    for i in 0..c.nats.len() {
        c.nats.kill(i);
    }
    let down = wait_for(CLUSTER_CHANGE, || {
        let h = healthz(node);
        (h.status == 503).then_some(h)
    })
    .unwrap_or_else(|| node.fail("healthz did not turn 503 with every NATS server gone"));
    assert!(down.body.contains("nats: disconnected"), "{}", down.body);
    // Open connections keep relaying.
    pair.exchange_text("with no NATS at all");
    // Registrations and one-step sessions are refused with 503 and Retry-After.
    let refused = node.ws_refused(&node.ws_url(DEVICE_LISTENER), &[]);
    assert_eq!(refused.status().as_u16(), 503);
    assert!(refused.headers().get("retry-after").is_some());
    let body = String::from_utf8_lossy(refused.body().as_deref().unwrap_or_default()).into_owned();
    assert!(body.contains("lost its cluster"), "{body}");
    // A claim on an open control channel is refused, saying why.
    let answer = pair.pos.claim("1002");
    assert_eq!(answer["type"], "error", "{answer}");
    assert!(
        answer["message"].as_str().unwrap_or("").contains("cluster"),
        "{answer}"
    );
    let metrics = node.metrics();
    assert_eq!(
        metric(&metrics, "posrelay_cluster_connected"),
        0.0,
        "{metrics}"
    );
    // The registration and the claim above, at least.
    assert!(
        metric(&metrics, "posrelay_cluster_refusals_total") >= 2.0,
        "{metrics}"
    );
    // The lease runs out with NATS gone: nobody can take the devices over, and the open
    // connections keep relaying.
    let lapsed = wait_for(CLUSTER_CHANGE, || {
        (metric(&node.metrics(), "posrelay_cluster_leases_lost_total") >= 1.0).then_some(())
    });
    assert!(
        lapsed.is_some(),
        "the lease did not lapse: {}",
        healthz(node).body
    );
    pair.exchange_text("after the lease lapsed with no NATS");

    // NATS back: so is the node, with a lease (a new one if the old lapsed).
    for i in 0..c.nats.len() {
        c.nats.start_again(i).expect("start a NATS server again");
    }
    c.nats
        .wait_ready(CLUSTER_CHANGE)
        .expect("NATS cluster ready again");
    let node = &c.nodes[0];
    let up = wait_for(CLUSTER_CHANGE, || {
        let h = healthz(node);
        (h.status == 200).then_some(h)
    })
    .unwrap_or_else(|| node.fail("healthz did not turn 200 with NATS back"));
    assert!(up.body.contains("lease: held"), "{}", up.body);
    let mut pos = Pos::control(node, &token);
    // Each stream elects its leader again after the restart, the ownership stream maybe
    // after the lease's: until then a claim answers `offline` ("retry"), as a POS would.
    let mut last = Value::Null;
    let claimed = wait_for(CLUSTER_CHANGE, || {
        last = pos.claim("1002");
        (last["type"] == "claimed").then_some(())
    });
    assert!(claimed.is_some(), "claim with NATS back: {last}");
    pair.exchange_text("NATS back");
}

/// A registration that may be refused: the reply and close code, or `None` on a refused
/// upgrade (503 while the node is between NATS servers) or a 1011 close without reply.
fn try_register(node: &Relay, tsn: &str, creds: &Creds) -> Option<(Value, u16)> {
    let (mut ws, _) = node.ws_connect(&node.ws_url(DEVICE_LISTENER), &[]).ok()?;
    let msg = json!({
        "type": "register",
        "tsn": tsn,
        "client_id": creds.client_id,
        "client_secret": creds.client_secret,
    });
    send_text(&mut ws, &msg.to_string());
    // While JetStream elects new leaders, the cluster may not record the device's node
    // yet: the relay closes with 1011 and no reply, and the device tries again.
    let reply = match recv_any(&mut ws) {
        Message::Text(t) => serde_json::from_str::<Value>(&t).ok()?,
        _ => return None,
    };
    let code = expect_close(&mut ws);
    Some((reply, code))
}

/// §12: "a device on node B claimed from a control channel on node C … messages both ways,
/// verbatim, in order"; "two clients on different nodes claim one tsn at the same
/// instant: exactly one `claimed`"; "a newer connection of the device on another node
/// takes it over, and the older connection is closed with 4000".
#[test]
fn claims_are_decided_by_the_node_that_owns_the_device_and_exclusive_across_nodes() {
    let c = cluster(3);
    let (a, b, node_c) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    let creds = a.provision("acme.com", "store-1", &["1001", "1002"]);
    let other = a.create_client("acme.com", Some("store-1"));
    let token = node_c.token("acme.com", &creds);
    let other_token = a.token("acme.com", &other);

    // The device is on b; its POS's control channel on c.
    let mut device = Device::register_and_connect(b, "1001", &creds);
    let mut pos = Pos::control(node_c, &token);
    let (sid, url) = pos.claim_ok("1001");
    assert_eq!(sid, device.reg.session_id);
    let b_url = format!("ws://{}", b.relay_addr);
    assert!(
        url.starts_with(&b_url),
        "session_url names the owning node b: {url}"
    );
    let mut session = Pos::session(b, &url, &token);
    for i in 0..20 {
        send_text(&mut session, &format!("to device {i}"));
    }
    for i in 0..20 {
        device.send_binary(format!("to pos {i}").as_bytes());
    }
    for i in 0..20 {
        match device.recv() {
            Message::Text(t) => assert_eq!(t, format!("to device {i}")),
            other => panic!("device got {}", show(&other)),
        }
        match recv(&mut session) {
            Message::Binary(bytes) => {
                assert_eq!(bytes.as_slice(), format!("to pos {i}").as_bytes())
            }
            other => panic!("POS got {}", show(&other)),
        }
    }

    // Two clients, on a and on c, claim 1002 (on b) at the same instant: one wins.
    let _device2 = Device::register_and_connect(b, "1002", &creds);
    let mut pos_a = Pos::control(a, &other_token);
    let (id_a, id_c) = (pos_a.new_request_id(), pos.new_request_id());
    send_json(
        &mut pos_a.ws,
        &json!({ "type": "claim", "tsn": "1002", "request_id": id_a }),
    );
    send_json(
        &mut pos.ws,
        &json!({ "type": "claim", "tsn": "1002", "request_id": id_c }),
    );
    let answers = [pos_a.answer_to(&id_a), pos.answer_to(&id_c)];
    let claimed = answers.iter().filter(|v| v["type"] == "claimed").count();
    assert_eq!(claimed, 1, "exactly one claimed: {answers:?}");
    assert!(
        answers
            .iter()
            .any(|v| v["type"] == "error" && v["code"] == "device_busy"),
        "the other is busy: {answers:?}"
    );

    // The device moves to a (b has recorded the claim, which a then holds): its
    // connection on b closes with 4000, and the POS session on b stays open, going on
    // with a (§12: "A POS session stays open while its device moves between nodes").
    wait_claim_recorded(b);
    let mut moved = Device::register_and_connect(a, "1001", &creds);
    assert_eq!(
        expect_close(&mut device.ws),
        4000,
        "the older connection on b"
    );
    moved.send_text("from a");
    match recv(&mut session) {
        Message::Text(t) => assert_eq!(t, "from a"),
        other => panic!("POS got {}", show(&other)),
    }
    send_text(&mut session, "to a");
    match moved.recv() {
        Message::Text(t) => assert_eq!(t, "to a"),
        other => panic!("device got {}", show(&other)),
    }
    // §12: "device_status … reach[es] the claim holder's control channels on whichever
    // nodes they are": b's offline and a's online reach the POS's channel on c.
    let events: Vec<(Option<String>, Option<bool>)> = (0..2)
        .map(|_| {
            let e = pos.next_event();
            assert_eq!(e["type"], "device_status", "{e}");
            assert_eq!(e["tsn"], "1001", "{e}");
            (e["tsn"].as_str().map(str::to_owned), e["online"].as_bool())
        })
        .collect();
    assert!(
        events.contains(&(Some("1001".into()), Some(false)))
            && events.contains(&(Some("1001".into()), Some(true))),
        "{events:?}"
    );
    let (sid2, url2) = pos.claim_ok("1001");
    assert_eq!(sid2, sid, "a device keeps its session_id across nodes");
    let a_url = format!("ws://{}", a.relay_addr);
    assert!(
        url2.starts_with(&a_url),
        "session_url names the new node a: {url2}"
    );
    let newer = Pos::session(a, &url2, &token);
    assert_eq!(
        expect_close(&mut session),
        4000,
        "replaced by the newer session on a"
    );
    let mut session = newer;
    send_text(&mut session, "after the move");
    match moved.recv() {
        Message::Text(t) => assert_eq!(t, "after the move"),
        other => panic!("device got {}", show(&other)),
    }
}

/// §12 "claims stay": waits (10 s at most) until `node` has recorded a claim in the
/// cluster (`posrelay_cluster_claim_records_total{result="written"}`).
fn wait_claim_recorded(node: &Relay) {
    let recorded = wait_for(Duration::from_secs(10), || {
        let text = node.metrics();
        (labelled(
            &text,
            "posrelay_cluster_claim_records_total",
            ("result", "written"),
        ) >= 1.0)
            .then_some(())
    });
    assert!(recorded.is_some(), "the device's node recorded the claim");
}

/// The value of `name{label="value"}` (0 if absent).
fn labelled(text: &str, name: &str, label: (&str, &str)) -> f64 {
    parse_metrics(text)
        .into_iter()
        .filter(|s| s.name == name && s.labels.get(label.0).map(String::as_str) == Some(label.1))
        .map(|s| s.value)
        .sum()
}

/// §12: "a device on node B claimed from a control channel on node C, its session opened
/// on node A: messages both ways, verbatim, in order"; "a session opened on any other
/// node works as well, its frames forwarded between nodes".
#[test]
fn a_session_opened_on_a_node_without_the_device_is_forwarded_to_the_node_that_has_it() {
    let c = cluster(3);
    let (a, b, node_c) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    let creds = a.provision("acme.com", "store-1", &["2001"]);
    let other = a.create_client("acme.com", Some("store-1"));
    let token = node_c.token("acme.com", &creds);
    let mut device = Device::register_and_connect(b, "2001", &creds);
    let mut pos = Pos::control(node_c, &token);
    let (sid, url) = pos.claim_ok("2001");

    // Before the claim holder's session: another client's is refused on a (403), as it
    // would be on b, and an unknown session is 404.
    let path = format!("/cloud-connector/v1/session/{sid}");
    let other_token = a.token("acme.com", &other);
    match a.ws_connect(
        &a.ws_url(&path),
        &[("Authorization", &format!("Bearer {other_token}"))],
    ) {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 403),
        other => panic!("another client's session on a: {:?}", other.map(|_| ())),
    }
    let unknown = "/cloud-connector/v1/session/AAAAAAAAAAAAAAAAAAAAAA";
    match a.ws_connect(
        &a.ws_url(unknown),
        &[("Authorization", &format!("Bearer {token}"))],
    ) {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 404),
        other => panic!("an unknown session on a: {:?}", other.map(|_| ())),
    }

    // §5: "frames a device sends while the claim holder has no session open are queued
    // … and delivered when the session opens", wherever it opens.
    device.send_text("before the session");
    // The session on a (the URL the claim gave names b; the POS connects to a).
    let mut session = Pos::session(a, &url, &token);
    match recv(&mut session) {
        Message::Text(t) => assert_eq!(t, "before the session"),
        other => panic!("POS got {}", show(&other)),
    }
    // Larger than one NATS message: cut on the way, whole on arrival.
    let big: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    for i in 0..50 {
        send_text(&mut session, &format!("to device {i} \u{e9}"));
    }
    send_binary(&mut session, &big);
    for i in 0..50 {
        device.send_binary(format!("to pos {i}").as_bytes());
    }
    device.send_binary(&big);
    for i in 0..50 {
        match device.recv() {
            Message::Text(t) => assert_eq!(t, format!("to device {i} \u{e9}")),
            other => panic!("device got {}", show(&other)),
        }
    }
    match device.recv() {
        Message::Binary(bytes) => assert!(bytes == big, "the large message, verbatim"),
        other => panic!("device got {}", show(&other)),
    }
    for i in 0..50 {
        match recv(&mut session) {
            Message::Binary(bytes) => {
                assert_eq!(bytes.as_slice(), format!("to pos {i}").as_bytes())
            }
            other => panic!("POS got {}", show(&other)),
        }
    }
    match recv(&mut session) {
        Message::Binary(bytes) => assert!(bytes == big, "the large message, verbatim"),
        other => panic!("POS got {}", show(&other)),
    }
    // More than the credit window (1 MiB) each way while the other side reads: the
    // credit comes back as the receiver hands messages on (§6 backpressure across nodes).
    let chunk = vec![7u8; 100_000];
    let sender = std::thread::spawn({
        let chunk = chunk.clone();
        move || {
            for _ in 0..40 {
                device.send_binary(&chunk);
            }
            device
        }
    });
    for i in 0..40 {
        match recv(&mut session) {
            Message::Binary(bytes) => assert!(bytes == chunk, "message {i} verbatim"),
            other => panic!("POS got {}", show(&other)),
        }
    }
    let mut device = sender.join().unwrap();
    let sender = std::thread::spawn({
        let chunk = chunk.clone();
        move || {
            for _ in 0..40 {
                send_binary(&mut session, &chunk);
            }
            session
        }
    });
    for i in 0..40 {
        match device.recv() {
            Message::Binary(bytes) => assert!(bytes == chunk, "message {i} verbatim"),
            other => panic!("device got {}", show(&other)),
        }
    }
    let mut session = sender.join().unwrap();
    assert_eq!(
        labelled(
            &a.metrics(),
            "posrelay_forwarded_sessions_total",
            ("end", "edge")
        ),
        1.0
    );
    assert_eq!(
        labelled(
            &b.metrics(),
            "posrelay_forwarded_sessions_total",
            ("end", "owner")
        ),
        1.0
    );

    // §5: "a newer POS session for the same claim replaces the older one (closed with
    // 4000)", across nodes too: a session on c replaces the one forwarded from a.
    let mut newer = Pos::session(node_c, &url, &token);
    assert_eq!(expect_close(&mut session), 4000, "the older session on a");
    device.send_binary(b"to the newer session");
    match recv(&mut newer) {
        Message::Binary(bytes) => assert_eq!(bytes.as_slice(), b"to the newer session"),
        other => panic!("POS got {}", show(&other)),
    }

    // §5a on a node without the device: the claim is decided by b (409 for another
    // client; idempotent for the holder), and the session is forwarded.
    let one_step = a.ws_url("/cloud-connector/v1/devices/2001/session");
    let bearer = |t: &str| format!("Bearer {t}");
    assert_eq!(
        a.ws_status(&one_step, &[("Authorization", &bearer(&other_token))]),
        409
    );
    let mut one = a.ws_bearer(&one_step, &token);
    assert_eq!(expect_close(&mut newer), 4000, "the session on c, replaced");
    send_text(&mut one, "one step");
    match device.recv() {
        Message::Text(t) => assert_eq!(t, "one step"),
        other => panic!("device got {}", show(&other)),
    }
    device.send_binary(b"back");
    match recv(&mut one) {
        Message::Binary(bytes) => assert_eq!(bytes.as_slice(), b"back"),
        other => panic!("POS got {}", show(&other)),
    }

    // §12 "A POS session stays open while its device moves between nodes": the device
    // moves from b to c (b has recorded the claim, which c then holds); the session on a
    // goes on with c.
    wait_claim_recorded(b);
    let mut moved = Device::register_and_connect(node_c, "2001", &creds);
    assert_eq!(
        expect_close(&mut device.ws),
        4000,
        "the older connection on b"
    );
    moved.send_text("from c");
    match recv(&mut one) {
        Message::Text(t) => assert_eq!(t, "from c"),
        other => panic!("POS got {}", show(&other)),
    }
    send_text(&mut one, "to c");
    match moved.recv() {
        Message::Text(t) => assert_eq!(t, "to c"),
        other => panic!("device got {}", show(&other)),
    }
}

/// §11 through §12's forwarding: a reliable session (`posrelay.reliable.v1`) opened on a
/// node without the device speaks its envelopes with the device's node, which keeps the
/// claim's numbering; cut and resumed on a third node, nothing is missed or repeated.
#[test]
fn a_reliable_session_is_forwarded_and_resumes_on_another_node() {
    const RELIABLE: &str = "posrelay.reliable.v1";
    let c = cluster(3);
    let (a, b, node_c) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    let creds = a.provision("acme.com", "store-1", &["4001"]);
    let token = node_c.token("acme.com", &creds);
    let mut device = Device::register_and_connect(b, "4001", &creds);
    let mut pos = Pos::control(node_c, &token);
    let (_, url) = pos.claim_ok("4001");
    let open = |node: &Relay| {
        let (ws, resp) = node
            .ws_connect(
                &url,
                &[
                    ("Authorization", &format!("Bearer {token}")),
                    ("Sec-WebSocket-Protocol", RELIABLE),
                ],
            )
            .expect("reliable session");
        let selected = resp.headers().get("Sec-WebSocket-Protocol").cloned();
        assert_eq!(
            selected.as_ref().and_then(|v| v.to_str().ok()),
            Some(RELIABLE)
        );
        ws
    };
    let mut session = open(a);
    send_json(&mut session, &json!({"type": "resume", "seq": 0}));
    let resumed = recv_json(&mut session);
    assert_eq!(resumed["type"], "resumed", "{resumed}");
    for i in 1..=5u64 {
        send_json(
            &mut session,
            &json!({"type": "data", "seq": i, "text": format!("pos {i}")}),
        );
    }
    for i in 1..=5u64 {
        match device.recv() {
            Message::Text(t) => assert_eq!(t, format!("pos {i}")),
            other => panic!("device got {}", show(&other)),
        }
    }
    for i in 1..=3u64 {
        device.send_text(&format!("device {i}"));
    }
    // Acks of the POS's messages and the device's numbered messages, in whatever order.
    let (got, reports) = read_reliable(&mut session, 5, 3);
    assert!(reports.is_empty(), "{reports:?}");
    assert_eq!(
        got,
        (1..=3u64)
            .map(|i| (i, format!("device {i}")))
            .collect::<Vec<_>>()
    );
    // The POS processed 1 and 2 only, then its connection breaks; it resumes on c.
    send_json(&mut session, &json!({"type": "ack", "seq": 2}));
    drop(session);
    device.send_text("device 4");
    let mut session = open(node_c);
    send_json(&mut session, &json!({"type": "resume", "seq": 2}));
    let resumed = recv_json(&mut session);
    assert_eq!(
        (resumed["type"].as_str(), resumed["seq"].as_u64()),
        (Some("resumed"), Some(5)),
        "the relay had all five POS messages: {resumed}"
    );
    for i in 3..=4u64 {
        let v = recv_json(&mut session);
        assert_eq!(
            (v["type"].as_str(), v["seq"].as_u64(), v["text"].as_str()),
            (Some("data"), Some(i), Some(format!("device {i}").as_str())),
            "{v}"
        );
    }
    // The POS processed 3 and 4; 5 reaches it, unprocessed, and the device moves to a
    // (§12): b's copy of the claim goes, the session closes (1012), and the POS resumes
    // on c with a, which read the claim from JetStream when the device arrived: 5 comes
    // again, numbered as b numbered it.
    send_json(&mut session, &json!({"type": "ack", "seq": 4}));
    device.send_text("device 5");
    let v = recv_json(&mut session);
    assert_eq!(
        (v["seq"].as_u64(), v["text"].as_str()),
        (Some(5), Some("device 5")),
        "{v}"
    );
    let mut moved = Device::register_and_connect(a, "4001", &creds);
    assert_eq!(
        expect_close(&mut session),
        1012,
        "the session follows the device"
    );
    let (mut session, resumed) = wait_for(Duration::from_secs(20), || {
        resume_reliable(node_c, &url, &token, 4)
    })
    .expect("the POS resumes once the device is on a");
    assert_eq!(resumed, 5, "a has the POS's five messages");
    let v = recv_json(&mut session);
    assert_eq!(
        (v["type"].as_str(), v["seq"].as_u64(), v["text"].as_str()),
        (Some("data"), Some(5), Some("device 5")),
        "{v}"
    );
    send_json(
        &mut session,
        &json!({"type": "data", "seq": 6, "text": "pos 6"}),
    );
    assert!(matches!(moved.recv(), Message::Text(t) if t == "pos 6"));
}

/// §4 claim grace across nodes: "A claim ends … when the client's control channels and
/// session stay closed for the claim grace period", its channels on every node: a claim
/// made from a control channel on c, for a device on b, with no session, holds past the
/// grace while that channel is open, and ends once it closes.
#[test]
fn a_claim_holds_while_its_holder_has_a_control_channel_on_any_node() {
    let grace = Duration::from_secs(2);
    let c = cluster_args(3, LEASE_TTL, &["--claim-grace", "2s"]);
    let (a, b, node_c) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    let creds = a.provision("acme.com", "store-1", &["3001"]);
    let other = a.create_client("acme.com", Some("store-1"));
    let token = node_c.token("acme.com", &creds);
    let other_token = a.token("acme.com", &other);
    let _device = Device::register_and_connect(b, "3001", &creds);
    let mut pos = Pos::control(node_c, &token);
    pos.claim_ok("3001");
    // Three grace periods pass with the holder's channel open on c only.
    std::thread::sleep(grace * 3);
    let mut intruder = Pos::control(a, &other_token);
    let claim = json!({ "type": "claim", "tsn": "3001" });
    let answer = intruder.request(claim.clone());
    assert_eq!(
        answer["code"].as_str(),
        Some("device_busy"),
        "held while the holder's channel on c is open: {answer}"
    );
    // The holder's channel closes: the claim ends a grace period later.
    drop(pos);
    let took = wait_for(Duration::from_secs(20), || {
        let answer = intruder.request(claim.clone());
        (answer["type"] == "claimed").then_some(())
    });
    assert!(took.is_some(), "the claim ended once no channel was open");
}

/// `posrelay device-sim --echo` for `tsns`, given the nodes `relays` in that order (as
/// behind DNS round robin: it tries the next when its connection fails), with its real
/// backoff; its output lines.
fn echoing_terminals(
    creds: &Creds,
    relays: &[&str],
    tsns: &[&str],
) -> (Killed, std::sync::mpsc::Receiver<String>) {
    let mut sim = Command::new(env!("CARGO_BIN_EXE_posrelay"));
    sim.arg("device-sim");
    for relay in relays {
        sim.args(["--relay", relay]);
    }
    for tsn in tsns {
        sim.args(["--tsn", tsn]);
    }
    sim.arg("--echo")
        .env("POSRELAY_CLIENT_ID", &creds.client_id)
        .env("POSRELAY_CLIENT_SECRET", &creds.client_secret);
    spawn_lines(sim)
}

/// §12: "`kill -9` the owning node: the device re-registers on a surviving node and the
/// POS, claiming again, exchanges messages within the lease TTL plus 5 s". The terminal
/// is `posrelay device-sim` given two nodes (as behind DNS round robin), with its real
/// backoff (0.5 s, full jitter).
#[test]
fn when_the_owning_node_is_killed_its_device_comes_back_on_another_and_its_pos_claims_it_again() {
    let mut c = cluster(3);
    let creds = c.nodes[0].provision("acme.com", "store-1", &["1001", "1002"]);
    let token = c.nodes[2].token("acme.com", &creds);
    let (a_url, b_url) = (
        format!("ws://{}", c.nodes[0].relay_addr),
        format!("ws://{}", c.nodes[1].relay_addr),
    );
    let (_sim, lines) = echoing_terminals(&creds, &[&b_url, &a_url], &["1001", "1002"]);
    // Both terminals online, in whichever order they say it.
    let mut online = std::collections::BTreeSet::new();
    while online.len() < 2 {
        let line = wait_line(&lines, "device-sim online on b", |l| {
            l.ends_with("] online")
        });
        online.extend(["1001", "1002"].into_iter().filter(|t| line.contains(t)));
    }
    let mut pos = Pos::control(&c.nodes[2], &token);
    // 1002's session is opened on c, forwarded to b.
    let (_, url_1002) = pos.claim_ok("1002");
    let mut forwarded = Pos::session(&c.nodes[2], &url_1002, &token);
    send_text(&mut forwarded, "forwarded before");
    assert!(matches!(recv(&mut forwarded), Message::Text(t) if t == "forwarded before"));
    let (sid, url) = pos.claim_ok("1001");
    assert!(url.starts_with(&b_url), "{url}");
    let mut session = Pos::session(&c.nodes[1], &url, &token);
    send_text(&mut session, "before");
    assert!(matches!(recv(&mut session), Message::Text(t) if t == "before"));
    // §12 "claims stay (they live in the cluster's store)": b has recorded the claim in
    // the device's ownership record.
    wait_claim_recorded(&c.nodes[1]);
    let other = c.nodes[0].create_client("acme.com", Some("store-1"));
    let other_token = c.nodes[0].token("acme.com", &other);

    // b dies with the device's connection and the POS session.
    c.nodes[1].kill_9();
    let killed = Instant::now();
    let ttl = Duration::from_secs(3);
    assert!(session.read().is_err(), "the POS session breaks with b");
    // The forwarded one, on c, is closed by c once its link is quiet for 5 s and NATS has
    // no responder for b: b is gone.
    set_read_timeout(&mut forwarded, Some(Duration::from_secs(20)));
    assert_eq!(
        expect_close(&mut forwarded),
        1012,
        "c closes the forwarded session"
    );
    // The terminal notices, backs off, and comes back through a.
    wait_line(&lines, "device-sim offline", |l| l.contains("] offline"));
    wait_line(&lines, "device-sim 1001 online again", |l| {
        l.contains("1001") && l.ends_with("] online")
    });
    // The claim survived: another client is refused, on any node.
    let mut intruder = Pos::control(&c.nodes[2], &other_token);
    let answer = intruder.request(json!({ "type": "claim", "tsn": "1001" }));
    assert_eq!(
        (answer["type"].as_str(), answer["code"].as_str()),
        (Some("error"), Some("device_busy")),
        "the claim survived the loss of b: {answer}"
    );
    // The POS, whose session broke, claims again: same session_id, now on a.
    let (sid2, url2) = pos.claim_ok("1001");
    assert_eq!(sid2, sid);
    assert!(url2.starts_with(&a_url), "{url2}");
    let mut session = Pos::session(&c.nodes[0], &url2, &token);
    send_text(&mut session, "after");
    assert!(matches!(recv(&mut session), Message::Text(t) if t == "after"));
    let took = killed.elapsed();
    eprintln!("failover: {took:?} from kill -9 to a message exchanged through another node");
    assert!(
        took < ttl + Duration::from_secs(5),
        "within the lease TTL plus 5 s: {took:?}"
    );
}

/// A §11 reliable session on `node` for the session at `url`: its upgrade, `resume` from
/// `seq`, and the relay's `resumed` (its `seq`). `None` if the node refused it, closed
/// it or answered something else (the cluster is still finding the device).
fn resume_reliable(node: &Relay, url: &str, token: &str, seq: u64) -> Option<(Ws, u64)> {
    let (mut ws, _) = node
        .ws_connect(
            url,
            &[
                ("Authorization", &format!("Bearer {token}")),
                ("Sec-WebSocket-Protocol", "posrelay.reliable.v1"),
            ],
        )
        .ok()?;
    send_json(&mut ws, &json!({"type": "resume", "seq": seq}));
    match ws.read() {
        Ok(Message::Text(t)) => {
            let v: Value = serde_json::from_str(&t).ok()?;
            (v["type"] == "resumed").then(|| (ws, v["seq"].as_u64().unwrap_or(0)))
        }
        _ => None,
    }
}

/// Reads a reliable session until the relay acknowledged the POS's messages up to `upto`
/// and `want` device messages came; returns them as (relay's number, text), and the
/// `undelivered` reports apart. Anything else fails the test.
fn read_reliable(session: &mut Ws, upto: u64, want: usize) -> (Vec<(u64, String)>, Vec<Value>) {
    let (mut acked, mut got, mut reports) = (0, Vec::new(), Vec::new());
    while acked < upto || got.len() < want {
        let v = recv_json(session);
        match v["type"].as_str() {
            Some("ack") => acked = v["seq"].as_u64().unwrap(),
            Some("data") => got.push((
                v["seq"].as_u64().unwrap(),
                v["text"].as_str().unwrap().to_string(),
            )),
            Some("undelivered") => reports.push(v),
            _ => panic!("unexpected envelope {v}"),
        }
    }
    (got, reports)
}

/// Every `undelivered` report names POS messages within `sent` (those a lost node had
/// handed to the terminal without recording it: the relay cannot know they arrived).
fn assert_reports_within(reports: &[Value], sent: std::ops::RangeInclusive<u64>) {
    for r in reports {
        let (from, to) = (
            r["from_seq"].as_u64().unwrap(),
            r["to_seq"].as_u64().unwrap(),
        );
        assert!(
            sent.contains(&from) && from <= to && sent.contains(&to),
            "{r}"
        );
    }
}

/// §11 "the loss of a node in a cluster": a POS and a terminal exchange numbered messages
/// over a reliable session on b, the node that holds the session and the device; b is
/// killed with `kill -9`. The terminal comes back on a, the POS resumes through c, and
/// nothing the relay acknowledged is missing, nothing is delivered twice, the order holds:
/// what b held (device messages the POS had not processed) comes again, verbatim, from
/// a, which read the claim from JetStream when the device arrived.
#[test]
fn a_reliable_session_survives_the_loss_of_the_node_that_holds_it_and_its_device() {
    let mut c = cluster(3);
    let creds = c.nodes[0].provision("acme.com", "store-1", &["5001"]);
    let token = c.nodes[2].token("acme.com", &creds);
    let (a_url, b_url) = (
        format!("ws://{}", c.nodes[0].relay_addr),
        format!("ws://{}", c.nodes[1].relay_addr),
    );
    // The terminal echoes what it gets, as `posrelay device-sim --echo` does, and
    // reconnects to a when b is gone.
    let (_sim, lines) = echoing_terminals(&creds, &[&b_url, &a_url], &["5001"]);
    wait_line(&lines, "device-sim online on b", |l| {
        l.ends_with("] online")
    });
    let mut pos = Pos::control(&c.nodes[2], &token);
    let (_, url) = pos.claim_ok("5001");
    assert!(url.starts_with(&b_url), "{url}");
    let (mut session, first) =
        resume_reliable(&c.nodes[1], &url, &token, 0).expect("reliable session on b");
    assert_eq!(first, 0);

    // POS messages 1..=10; the terminal echoes each, and the relay numbers the echoes.
    for i in 1..=10u64 {
        send_json(
            &mut session,
            &json!({"type": "data", "seq": i, "text": format!("pos {i}")}),
        );
    }
    let (echoes, reports) = read_reliable(&mut session, 10, 10);
    assert!(reports.is_empty(), "{reports:?}");
    let want: Vec<(u64, String)> = (1..=10u64).map(|i| (i, format!("pos {i}"))).collect();
    assert_eq!(echoes, want, "numbered in order, each once");
    // The POS processes 1..=7 only (it acknowledges them); 8..=10 stay held by b.
    send_json(&mut session, &json!({"type": "ack", "seq": 7}));

    // b dies with the terminal's connection and the POS session.
    c.nodes[1].kill_9();
    assert!(session.read().is_err(), "the POS session breaks with b");
    wait_line(&lines, "device-sim offline", |l| l.contains("] offline"));
    wait_line(&lines, "device-sim online again on a", |l| {
        l.ends_with("] online")
    });

    // The POS resumes, on c, from what it processed: the relay had all ten of its
    // messages, and gives back 8..=10 as b numbered them.
    let (mut session, resumed) = wait_for(Duration::from_secs(30), || {
        resume_reliable(&c.nodes[2], &url, &token, 7)
    })
    .expect("the POS resumes through c once the terminal is back");
    assert_eq!(resumed, 10, "nothing the relay acknowledged is missing");
    let (got, reported) = read_reliable(&mut session, 0, 3);
    assert_eq!(got, want[7..].to_vec(), "what b held comes again, verbatim");
    // A report (if any) names only messages b had handed to the terminal, whose writes it
    // had not yet recorded: the relay cannot know they reached it, so it says so.
    assert_reports_within(&reported, 1..=10);

    // And the session goes on through a: 11..=15, echoed and numbered after 10.
    send_json(&mut session, &json!({"type": "ack", "seq": 10}));
    for i in 11..=15u64 {
        send_json(
            &mut session,
            &json!({"type": "data", "seq": i, "text": format!("pos {i}")}),
        );
    }
    let (more, reports) = read_reliable(&mut session, 15, 5);
    assert!(reports.is_empty(), "{reports:?}");
    assert_eq!(
        more,
        (11..=15u64)
            .map(|i| (i, format!("pos {i}")))
            .collect::<Vec<_>>(),
        "nothing twice, in order"
    );
    let metrics = c.nodes[0].metrics();
    assert!(
        labelled(
            &metrics,
            "posrelay_cluster_reliable_writes_total",
            ("result", "stored")
        ) > 0.0,
        "a writes the claim to JetStream now"
    );
}

/// §12 fencing: "`SIGSTOP` the owner for three lease periods while the device moves, then
/// `SIGCONT`: the old node delivers nothing more and closes the stale connection".
#[test]
fn a_node_paused_past_its_lease_delivers_nothing_more_and_closes_the_stale_connection() {
    let c = cluster(2);
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let creds = a.provision("acme.com", "store-1", &["1001"]);
    let token = a.token("acme.com", &creds);
    let mut pair = Pair::connect(a, "acme.com", "1001", &creds);
    for i in 0..5 {
        pair.exchange_text(&format!("message {i}"));
    }

    // a stops (a long GC pause, a frozen VM) while its POS goes on sending.
    a.signal(libc::SIGSTOP);
    // kill(2) returns before every thread has stopped: wait until they all have, so that
    // what follows is sent to a stopped process.
    let stopped = wait_for(Duration::from_secs(10), || {
        all_threads_stopped(a.pid()).then_some(())
    });
    assert!(stopped.is_some(), "node a did not stop");
    for i in 5..10 {
        send_text(&mut pair.session, &format!("message {i}"));
    }
    // The device gives up on a and connects to b, which takes the tsn over.
    let mut moved = Device::register_and_connect(b, "1001", &creds);
    // The fault itself: a stays stopped for three lease periods.
    std::thread::sleep(3 * Duration::from_secs(3));
    a.signal(libc::SIGCONT);

    // a delivers nothing of what it read after its lease lapsed, and closes the stale
    // connection with 4000: "4000 where the device is connected elsewhere by then".
    let (late, code) = drain_until_close(&mut pair.device.ws);
    let data: Vec<String> = late
        .iter()
        .filter(|m| matches!(m, Message::Text(_) | Message::Binary(_)))
        .map(show)
        .collect();
    assert!(
        data.is_empty(),
        "the paused node delivered after its lease: {data:?}"
    );
    assert_eq!(code, 4000, "the stale connection of a device now on b");
    // The device, on b, is reachable again through a claim.
    let mut pos = Pos::control(b, &token);
    let (_, url) = pos.claim_ok("1001");
    let mut session = Pos::session(b, &url, &token);
    send_text(&mut session, "message 10");
    assert!(matches!(moved.recv(), Message::Text(t) if t == "message 10"));
    // a holds a lease again (a new incarnation) and serves again.
    let up = wait_for(CLUSTER_CHANGE, || {
        let h = healthz(a);
        (h.status == 200).then_some(h)
    });
    assert!(
        up.is_some(),
        "a did not acquire a new lease: {}",
        healthz(a).body
    );
    assert!(metric(&a.metrics(), "posrelay_cluster_leases_lost_total") >= 1.0);
}

/// §12 fencing with a reliable claim (§11): a node paused past its lease lets the claim
/// go without ending it, even though no other node took the device: the claim stays in
/// JetStream as it was. Its POS session closes with 1012 and no report; when the
/// terminal comes back to the node (its new incarnation), the claim comes back from
/// JetStream with it, and the POS resumes with what it had not processed.
#[test]
fn a_node_paused_past_its_lease_keeps_its_reliable_claim_for_the_devices_return() {
    let c = cluster(2);
    let a = &c.nodes[0];
    let creds = a.provision("acme.com", "store-1", &["1002"]);
    let token = a.token("acme.com", &creds);
    let mut device = Device::register_and_connect(a, "1002", &creds);
    let mut pos = Pos::control(a, &token);
    let (_, url) = pos.claim_ok("1002");
    let (mut session, first) = resume_reliable(a, &url, &token, 0).expect("reliable session on a");
    assert_eq!(first, 0);

    // POS 1..=3 reach the terminal; it answers twice, numbered 1 and 2 by the relay.
    for i in 1..=3u64 {
        send_json(
            &mut session,
            &json!({"type": "data", "seq": i, "text": format!("pos {i}")}),
        );
    }
    for i in 1..=3 {
        assert!(matches!(device.recv(), Message::Text(t) if t == format!("pos {i}")));
    }
    device.send_text("dev 1");
    device.send_text("dev 2");
    let (got, _) = read_reliable(&mut session, 3, 2);
    assert_eq!(got, [(1, "dev 1".into()), (2, "dev 2".into())]);
    // The POS processes the first only.
    send_json(&mut session, &json!({"type": "ack", "seq": 1}));
    let reliable_claims =
        |node: &Relay| labelled(&node.metrics(), "posrelay_reliable_claims", ("shard", "0"));
    let held_bytes = |node: &Relay| {
        labelled(
            &node.metrics(),
            "posrelay_reliable_held_bytes",
            ("shard", "0"),
        )
    };
    let held = wait_for(Duration::from_secs(10), || {
        (reliable_claims(a) == 1.0 && held_bytes(a) >= "dev 2".len() as f64).then_some(())
    });
    assert!(
        held.is_some(),
        "a reports the reliable claim it holds, and at least the answer not processed"
    );

    // a stops for three lease periods (the fault itself); nobody takes the device.
    a.signal(libc::SIGSTOP);
    let stopped = wait_for(Duration::from_secs(10), || {
        all_threads_stopped(a.pid()).then_some(())
    });
    assert!(stopped.is_some(), "node a did not stop");
    std::thread::sleep(3 * Duration::from_secs(3));
    a.signal(libc::SIGCONT);

    // a lets the claim go: the session closes with 1012 (resume later), and a neither
    // reports anything undelivered nor ends the claim.
    let (late, code) = drain_until_close(&mut session);
    assert_eq!(
        code, 1012,
        "the paused node's reliable session: resume later"
    );
    assert!(late.is_empty(), "nothing from the paused node: {late:?}");
    let gone = wait_for(Duration::from_secs(10), || {
        (reliable_claims(a) == 0.0).then_some(())
    });
    assert!(gone.is_some(), "a still holds the reliable claim it lost");

    // a holds a lease again (a new incarnation); the terminal comes back to it, and the
    // claim with it, read from JetStream.
    let up = wait_for(CLUSTER_CHANGE, || (healthz(a).status == 200).then_some(()));
    assert!(
        up.is_some(),
        "a did not acquire a new lease: {}",
        healthz(a).body
    );
    let mut back = Device::connect(a, device.reg.clone());
    let (mut session, resumed) = wait_for(Duration::from_secs(30), || {
        resume_reliable(a, &url, &token, 1)
    })
    .expect("the POS resumes once the terminal is back");
    assert_eq!(resumed, 3, "nothing the relay acknowledged is missing");
    let (got, reports) = read_reliable(&mut session, 0, 1);
    assert_eq!(
        got,
        [(2, "dev 2".into())],
        "what the claim held comes again"
    );
    assert_reports_within(&reports, 1..=3);

    // The session goes on, both ways, numbered after what came before. The relay may
    // hand the terminal again what it had written but not yet recorded (1..=3, in
    // order); then 4.
    send_json(&mut session, &json!({"type": "ack", "seq": 2}));
    send_json(
        &mut session,
        &json!({"type": "data", "seq": 4, "text": "pos 4"}),
    );
    let mut seen = Vec::new();
    loop {
        match back.recv() {
            Message::Text(t) if t == "pos 4" => break,
            Message::Text(t) => seen.push(t),
            other => panic!("unexpected {other:?}"),
        }
    }
    let expected: Vec<String> = (1..=3).map(|i| format!("pos {i}")).collect();
    assert!(
        seen.iter().all(|s| expected.contains(s)) && seen.windows(2).all(|w| w[0] < w[1]),
        "only earlier messages, in order, before pos 4: {seen:?}"
    );
    back.send_text("dev 3");
    let (got, _) = read_reliable(&mut session, 4, 1);
    assert_eq!(got, [(3, "dev 3".into())]);
    let again = wait_for(Duration::from_secs(10), || {
        (reliable_claims(a) == 1.0).then_some(())
    });
    assert!(again.is_some(), "a reports the claim it holds again");
}
