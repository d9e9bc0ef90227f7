//! The TLS client configuration for `wss://` and `https://`: the public web PKI roots
//! (webpki-roots), or the certificates of a `--ca-file` (a private CA, a self-signed
//! test certificate).

use anyhow::Context;
use std::path::Path;
use std::sync::Arc;

/// A rustls client configuration trusting `ca_file`'s certificates when given, else
/// the Mozilla root set.
pub fn client_config(ca_file: Option<&Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    client_config_with_cert(ca_file, None)
}

/// Like [`client_config`], presenting the client certificate chain and key of two PEM
/// files when given (PROTOCOL.md §2a: a terminal that authenticates with its certificate).
pub fn client_config_with_cert(
    ca_file: Option<&Path>,
    client_cert: Option<(&Path, &Path)>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read CA file {}", path.display()))?;
            let mut added = 0;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert =
                    cert.with_context(|| format!("CA file {} is not valid PEM", path.display()))?;
                roots.add(cert).with_context(|| {
                    format!("CA file {} holds a bad certificate", path.display())
                })?;
                added += 1;
            }
            if added == 0 {
                anyhow::bail!("CA file {} holds no certificate", path.display());
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots);
    let config = match client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let pem = std::fs::read(cert)
                .with_context(|| format!("cannot read client certificate {}", cert.display()))?;
            let chain = rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("{} is not valid PEM", cert.display()))?;
            if chain.is_empty() {
                anyhow::bail!("{} holds no certificate", cert.display());
            }
            let pem = std::fs::read(key)
                .with_context(|| format!("cannot read client key {}", key.display()))?;
            let key_der = rustls_pemfile::private_key(&mut pem.as_slice())
                .with_context(|| format!("{} is not valid PEM", key.display()))?
                .with_context(|| format!("{} holds no private key", key.display()))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .with_context(|| {
                    format!(
                        "{} and {} do not go together",
                        cert.display(),
                        key.display()
                    )
                })?
        }
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_roots_by_default_and_errors_for_bad_ca_files() {
        assert!(client_config(None).is_ok());
        let dir = std::env::temp_dir().join(format!("posrelay-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = client_config(Some(&empty)).unwrap_err().to_string();
        assert!(err.contains("holds no certificate"), "{err}");
        assert!(client_config(Some(&dir.join("missing.pem"))).is_err());
    }
}
