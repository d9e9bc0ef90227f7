//! `posrelay serve`: maps the resolved settings onto the relay server, prints where it
//! listens, and turns signals into a graceful drain (SIGTERM, SIGINT; a second one
//! exits at once) or a certificate reload (SIGHUP).

use crate::config::Settings;
use posrelay_core::handshake::{HeadLimits, SubprotocolPolicy};
use posrelay_core::io::runtime::RuntimeConfig;
use posrelay_core::io::server::admission::AdmissionLimits;
use posrelay_core::io::server::{
    run_server, ClusterConfig, DeviceMtlsConfig, ServerConfig, StopHandle,
};
use posrelay_core::ownership::{LeaseTerms, NodeId};
use posrelay_core::proto::Limits;
use posrelay_core::relay::RelayLimits;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::io::Write;

/// Per-connection send queue before the sender is paused (backpressure).
const SEND_QUEUE_BYTES: usize = 256 * 1024;

/// Runs the relay until it is stopped.
pub fn run(settings: Settings) -> anyhow::Result<()> {
    posrelay_core::io::metrics::set_build_info(
        env!("CARGO_PKG_VERSION"),
        env!("POSRELAY_COMMIT"),
        env!("POSRELAY_BUILD_DATE"),
    );
    let config = server_config(&settings);
    let stop = StopHandle::default();
    watch_signals(stop.clone())?;
    run_server(config, stop, |addrs| {
        let scheme = if addrs.tls { "wss" } else { "ws" };
        let mut out = std::io::stdout().lock();
        // Tests and scripts read these lines to find the ports (the admin line last).
        let _ = writeln!(out, "relay listening on {scheme}://{}", addrs.relay);
        if let Some(mtls) = addrs.device_mtls {
            let _ = writeln!(out, "device mTLS listening on wss://{mtls}");
        }
        let _ = writeln!(out, "admin listening on http://{}", addrs.admin);
        let _ = out.flush();
    })?;
    Ok(())
}

pub(crate) fn server_config(s: &Settings) -> ServerConfig {
    let runtime = RuntimeConfig {
        shards: s.shards,
        ..RuntimeConfig::default()
    };
    let max = s.max_message_bytes;
    let relay_limits = RelayLimits {
        offline_queue_bytes: s.offline_queue_bytes,
        offline_grace: s.offline_grace,
        claim_grace: s.claim_grace,
        ..RelayLimits::default()
    };
    ServerConfig {
        listen: s.listen,
        admin_listen: s.admin_listen,
        data_dir: s.data_dir.clone(),
        store: Default::default(),
        public_url: s.public_url.clone(),
        runtime,
        tls: s.tls.clone(),
        device_mtls: s.device_mtls_listen.map(|listen| DeviceMtlsConfig {
            listen,
            client_ca: s.device_client_ca.clone(),
        }),
        subprotocols: match &s.subprotocols {
            Some(list) => SubprotocolPolicy::OneOf(list.clone()),
            None => SubprotocolPolicy::FirstOffered,
        },
        relay_limits,
        ws_limits: Limits {
            max_frame_payload: max as u64,
            max_message: max,
        },
        head_limits: HeadLimits {
            max_head_bytes: s.max_header_bytes,
            max_headers: s.max_header_count,
        },
        handshake_timeout: s.handshake_timeout,
        ping_interval: s.ping_interval,
        idle_timeout: s.idle_timeout,
        drain_timeout: s.drain_timeout,
        access_token_ttl: s.access_token_ttl,
        admin_token: s.admin_token.clone(),
        send_queue_bytes: SEND_QUEUE_BYTES,
        hash_cost: posrelay_core::auth::HashCost::PRODUCTION,
        admission: AdmissionLimits {
            max_connections: s.max_connections,
            max_unauthenticated: s.max_unauthenticated,
            max_unauthenticated_wait: s.max_unauthenticated_wait,
            max_per_client: s.max_connections_per_client,
            failed_logins_per_client: s.failed_logins_per_client,
            failed_logins_per_address: s.failed_logins_per_address,
            failed_logins_per_client_total: s.failed_logins_per_client_total,
        },
        reliable_window: s.reliable_window,
        cluster: s.cluster.as_ref().map(|c| ClusterConfig {
            servers: c.servers.clone(),
            node_id: NodeId::new(c.node_id.clone())
                .expect("checked when the settings were resolved"),
            node_url: c.node_url.clone(),
            lease: LeaseTerms::new(c.lease_ttl).expect("checked when the settings were resolved"),
            replicas: c.replicas,
        }),
    }
}

fn watch_signals(stop: StopHandle) -> anyhow::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    std::thread::Builder::new()
        .name("posrelay-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                match signal {
                    SIGHUP => stop.reload_tls(),
                    _ if stop.is_stopping() => {
                        tracing::warn!("second signal: exiting without draining");
                        std::process::exit(1);
                    }
                    _ => {
                        tracing::info!(signal, "draining: closing connections with 1001");
                        stop.stop();
                    }
                }
            }
        })?;
    Ok(())
}
