//! TLS for the relay listener: PEM certificate chain and key loaded with rustls, and
//! reloaded without a restart on SIGHUP (new connections get the new certificate).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// The current server configuration, swappable.
pub(crate) struct TlsReloader {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl TlsReloader {
    /// Loads the certificate and key; fails with a message that names the file.
    pub fn load(cert: &Path, key: &Path) -> std::io::Result<TlsReloader> {
        let config = build(cert, key)?;
        Ok(TlsReloader {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// The configuration for a new connection.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.current
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Reads the files again; on error the old certificate stays in use.
    pub fn reload(&self) -> std::io::Result<()> {
        let config = build(&self.cert, &self.key)?;
        match self.current.write() {
            Ok(mut c) => *c = Arc::new(config),
            Err(e) => *e.into_inner() = Arc::new(config),
        }
        Ok(())
    }
}

fn build(cert: &Path, key: &Path) -> std::io::Result<rustls::ServerConfig> {
    let certs = {
        let mut reader = std::io::BufReader::new(open(cert)?);
        rustls_pemfile::certs(&mut reader)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(cert, &e.to_string()))?
    };
    if certs.is_empty() {
        return Err(bad(cert, "no PEM certificate found"));
    }
    let key_der = {
        let mut reader = std::io::BufReader::new(open(key)?);
        rustls_pemfile::private_key(&mut reader)
            .map_err(|e| bad(key, &e.to_string()))?
            .ok_or_else(|| bad(key, "no PEM private key found"))?
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| std::io::Error::other(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| bad(cert, &format!("certificate and key do not fit: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn open(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display())))
}

fn bad(path: &Path, what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("{}: {what}", path.display()),
    )
}
