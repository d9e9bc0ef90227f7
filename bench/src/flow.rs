//! How a pair comes to exist on each target, over the generator's own client.
//!
//! - posrelay: the device registers (§2) and connects (§3); the POS opens its
//!   control channel, claims the device (§4), closes the control channel and
//!   opens the session (§5).
//! - baseline: both ends connect to `/pair` and send the pair id; the relay
//!   answers `paired` to both.
//! - direct: the POS connects to the echo server; there is no device.

use std::net::SocketAddr;

use anyhow::{anyhow, bail, Context as _};
use posrelay_core::proto::MessageKind;
use serde_json::{json, Value};

use crate::admin::Provisioned;
use crate::target::TargetKind;
use crate::wsclient::{connect, message_bytes, Dial, Incoming, WsReader};

/// What the generator knows about the target it talks to.
#[derive(Debug, Clone)]
pub struct Env {
    /// Which kind of server.
    pub kind: TargetKind,
    /// Its WebSocket address.
    pub ws: SocketAddr,
    /// posrelay's provisioning (devices, POS client, token).
    pub provisioned: Option<Provisioned>,
    /// `--tls`: connect over TLS with this client configuration.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// `--reliable`: sessions speak posrelay.reliable.v1 (PROTOCOL.md §11).
    pub reliable: bool,
}

/// The two ends of a pair once it can carry messages.
pub struct PairConns {
    /// The POS end: it sends and measures.
    pub pos: WsReader,
    /// The device end: it echoes (none for `direct`, where the server echoes).
    pub device: Option<WsReader>,
}

/// The baseline's pair id of pair `i`.
pub fn pair_id(i: usize) -> String {
    format!("pair-{i}")
}

/// The path of an absolute `ws://host/path` URL the relay handed out (§7a).
pub fn url_path(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    Some(&rest[rest.find('/')?..])
}

fn provisioned(env: &Env) -> anyhow::Result<&Provisioned> {
    env.provisioned
        .as_ref()
        .ok_or_else(|| anyhow!("posrelay target without provisioning"))
}

async fn next_json(conn: &mut WsReader) -> anyhow::Result<Value> {
    match conn.next().await? {
        Incoming::Message(m) => {
            let bytes = message_bytes(&m);
            serde_json::from_slice(&bytes)
                .with_context(|| format!("not JSON: {:?}", String::from_utf8_lossy(&bytes)))
        }
        Incoming::Closed(code) => bail!("closed ({code:?}) while waiting for an answer"),
    }
}

fn str_field<'a>(v: &'a Value, k: &str) -> anyhow::Result<&'a str> {
    v.get(k)
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("answer without {k}: {v}"))
}

/// Brings device `i` online and returns its connection.
pub async fn device_online(env: &Env, i: usize) -> anyhow::Result<WsReader> {
    device_online_with(env, i, env.tls.as_ref()).await
}

/// Brings device `i` online over `tls` (with `--tls`: the device's own client
/// configuration, and so its own TLS session tickets) and returns its connection.
pub async fn device_online_with(
    env: &Env,
    i: usize,
    tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
) -> anyhow::Result<WsReader> {
    match env.kind {
        TargetKind::Posrelay => {
            let p = provisioned(env)?;
            let tsn = p
                .tsns
                .get(i)
                .ok_or_else(|| anyhow!("device {i} not provisioned"))?;
            // §2: register, read `registered`, then the relay closes with 1000.
            let mut reg = connect(&Dial {
                addr: env.ws,
                path: "/cloud-connector/v1/device-listener",
                protocols: &[],
                headers: &[],
                tls,
            })
            .await
            .context("device-listener")?;
            let register = json!({
                "type": "register",
                "tsn": tsn,
                "client_id": p.client.client_id,
                "client_secret": p.client.client_secret,
            });
            reg.writer().send_text(&register.to_string()).await?;
            let answer = next_json(&mut reg).await.context("registration")?;
            if answer.get("type").and_then(Value::as_str) != Some("registered") {
                bail!("registration answered {answer}");
            }
            let path = url_path(str_field(&answer, "connection_url")?)
                .ok_or_else(|| anyhow!("bad connection_url in {answer}"))?
                .to_owned();
            let token = str_field(&answer, "token")?.to_owned();
            // The relay closes after the answer; take its Close (or the end of the stream).
            let _ = reg.next().await;
            drop(reg);
            // §3: the device connection.
            let auth = format!("Bearer {token}");
            connect(&Dial {
                addr: env.ws,
                path: &path,
                protocols: &[],
                headers: &[("Authorization", &auth)],
                tls,
            })
            .await
            .context("device-connection")
        }
        TargetKind::Baseline => {
            let conn = connect(&Dial {
                addr: env.ws,
                path: "/pair",
                protocols: &[],
                headers: &[],
                tls,
            })
            .await?;
            conn.writer().send_text(&pair_id(i)).await?;
            Ok(conn)
        }
        TargetKind::Direct => Ok(connect(&Dial {
            addr: env.ws,
            path: "/",
            protocols: &[],
            headers: &[],
            tls,
        })
        .await?),
    }
}

/// Claims device `i` on a control channel and returns its session path (§4).
async fn claim(env: &Env, i: usize) -> anyhow::Result<String> {
    let p = provisioned(env)?;
    let tsn = p
        .tsns
        .get(i)
        .ok_or_else(|| anyhow!("device {i} not provisioned"))?;
    let auth = format!("Bearer {}", p.access_token);
    let mut ctl = connect(&Dial {
        addr: env.ws,
        path: "/cloud-connector/v1/pos-listener",
        protocols: &[],
        headers: &[("Authorization", &auth)],
        tls: env.tls.as_ref(),
    })
    .await
    .context("pos-listener")?;
    let request_id = format!("claim-{i}");
    let claim = json!({ "type": "claim", "tsn": tsn, "request_id": request_id });
    ctl.writer().send_text(&claim.to_string()).await?;
    let path = loop {
        let v = next_json(&mut ctl).await.context("claim")?;
        let ty = v.get("type").and_then(Value::as_str);
        let ours = v.get("request_id").and_then(Value::as_str) == Some(request_id.as_str());
        match ty {
            Some("claimed") if ours => {
                break url_path(str_field(&v, "session_url")?)
                    .ok_or_else(|| anyhow!("bad session_url in {v}"))?
                    .to_owned();
            }
            Some("error") if ours => bail!("claim answered {v}"),
            // device_status and other pushed events.
            _ => continue,
        }
    };
    ctl.close().await;
    Ok(path)
}

async fn baseline_end(env: &Env, i: usize) -> anyhow::Result<WsReader> {
    let mut conn = device_online(env, i).await?;
    let m = conn.next_message().await.context("waiting for paired")?;
    if m.kind != MessageKind::Text || &message_bytes(&m)[..] != b"paired" {
        bail!(
            "baseline answered {:?} instead of paired",
            message_bytes(&m)
        );
    }
    Ok(conn)
}

/// Sets up pair `i` on the target.
pub async fn open_pair(env: &Env, i: usize) -> anyhow::Result<PairConns> {
    match env.kind {
        TargetKind::Posrelay => {
            let device = device_online(env, i).await?;
            let path = claim(env, i).await?;
            let p = provisioned(env)?;
            let auth = format!("Bearer {}", p.access_token);
            let reliable = [posrelay_core::reliable::SUBPROTOCOL];
            let mut pos = connect(&Dial {
                addr: env.ws,
                path: &path,
                protocols: if env.reliable { &reliable } else { &[] },
                headers: &[("Authorization", &auth)],
                tls: env.tls.as_ref(),
            })
            .await
            .context("session")?;
            if env.reliable {
                // §11: the first message is the POS's resume; a new claim resumes from 0.
                pos.writer()
                    .send_text(r#"{"type":"resume","seq":0}"#)
                    .await?;
                let answer = next_json(&mut pos).await.context("resume")?;
                if answer.get("type").and_then(Value::as_str) != Some("resumed") {
                    bail!("resume answered {answer}");
                }
            }
            Ok(PairConns {
                pos,
                device: Some(device),
            })
        }
        TargetKind::Baseline => {
            let (device, pos) =
                futures_lite::future::zip(baseline_end(env, i), baseline_end(env, i)).await;
            Ok(PairConns {
                pos: pos?,
                device: Some(device?),
            })
        }
        TargetKind::Direct => Ok(PairConns {
            pos: device_online(env, i).await?,
            device: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_of_handed_out_urls() {
        assert_eq!(
            url_path("ws://127.0.0.1:4000/cloud-connector/v1/session/abc"),
            Some("/cloud-connector/v1/session/abc")
        );
        assert_eq!(url_path("wss://relay.example/x?y=1"), Some("/x?y=1"));
        assert_eq!(url_path("ws://host-without-path"), None);
        assert_eq!(url_path("no scheme"), None);
    }
}
