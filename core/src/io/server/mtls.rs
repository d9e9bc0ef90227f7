//! TLS of the `--device-mtls-listen` listener (PROTOCOL.md §2a): terminals that carry no
//! client secret (a Verifone SCA terminal, seed 000) authenticate with a TLS client
//! certificate, and the SHA-256 fingerprint of its leaf certificate names the device.
//!
//! - The listener serves the relay's own certificate and key (`--tls-cert`/`--tls-key`):
//!   its configuration is derived from the relay listener's current one (same certificate
//!   resolver, same ALPN), so a SIGHUP reload reaches both ([`MtlsConfig::for_main`]).
//! - A client certificate is required. With `--device-client-ca FILE` it must chain to
//!   those roots: rustls' [`WebPkiClientVerifier`]. Without it, [`PinOnlyVerifier`] accepts
//!   any well-formed certificate, "the TLS handshake only proves that the client holds the
//!   certificate's key, and the pin ... is all that identifies it": the handshake
//!   signature is still verified, by rustls' own `verify_tls12_signature` /
//!   `verify_tls13_signature` over the crypto provider's algorithms. No crypto here.
//! - After the handshake, [`peer_fingerprint`] gives the fingerprint the shard handover
//!   keys on, and [`crate::auth::identify_device`] the device it is pinned to.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig};

use crate::tenancy::CertFingerprint;

/// How the mTLS listener trusts client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTrust {
    /// `--device-client-ca`: a certificate must chain to its roots (and be pinned).
    CaRoots,
    /// No CA: any certificate whose key the client holds (and that is pinned).
    PinOnly,
}

/// The pin-only client certificate verifier (§2a without `--device-client-ca`).
///
/// It requires a certificate (rustls' default `client_auth_mandatory`), refuses one that
/// does not parse as an X.509 end-entity certificate, accepts any issuer and validity
/// period (the pin, checked after the handshake, identifies the device), and verifies the
/// client's handshake signature with rustls' functions over `algorithms`, so that a
/// client that does not hold the certificate's private key fails the handshake.
#[derive(Debug)]
pub struct PinOnlyVerifier {
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinOnlyVerifier {
    /// A verifier checking signatures with `provider`'s algorithms.
    pub fn new(provider: &CryptoProvider) -> Self {
        Self {
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ClientCertVerifier for PinOnlyVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // RFC 8446 §4.2.4: no hint, so the client sends whatever certificate it has.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // A certificate that does not parse has no key to verify the signature with.
        ParsedCertificate::try_from(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The verifier of `--device-client-ca FILE` (PEM roots) or, without one, the pin-only one.
/// Errors name the file and say what to fix.
pub fn client_verifier(
    client_ca: Option<&Path>,
    provider: Arc<CryptoProvider>,
) -> std::io::Result<(Arc<dyn ClientCertVerifier>, ClientTrust)> {
    let Some(path) = client_ca else {
        return Ok((
            Arc::new(PinOnlyVerifier::new(&provider)),
            ClientTrust::PinOnly,
        ));
    };
    let roots = load_roots(path)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| {
            bad(
                path,
                &format!("cannot verify client certificates with it: {e}"),
            )
        })?;
    Ok((verifier, ClientTrust::CaRoots))
}

/// The CA certificates of a PEM file.
fn load_roots(path: &Path) -> std::io::Result<RootCertStore> {
    let pem = std::fs::read(path).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot read --device-client-ca {}: {e}", path.display()),
        )
    })?;
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| bad(path, &format!("not valid PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| bad(path, &format!("holds a certificate that is not a CA: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad(
            path,
            "holds no PEM certificate: give the CA certificate(s) that issue the terminals' client certificates",
        ));
    }
    Ok(roots)
}

fn bad(path: &Path, what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("--device-client-ca {}: {what}", path.display()),
    )
}

/// The mTLS listener's server configuration: the relay listener's certificate resolver
/// and ALPN (the same `--tls-cert`/`--tls-key`), its crypto provider, and client
/// certificates verified by `verifier`.
pub fn server_config(
    main: &ServerConfig,
    verifier: Arc<dyn ClientCertVerifier>,
) -> Result<ServerConfig, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(main.crypto_provider().clone())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(main.cert_resolver.clone());
    config.alpn_protocols = main.alpn_protocols.clone();
    Ok(config)
}

/// The mTLS listener's configuration, kept in step with the relay listener's: built again
/// only when the relay listener's configuration changed (its certificate was reloaded).
pub struct MtlsConfig {
    verifier: Arc<dyn ClientCertVerifier>,
    trust: ClientTrust,
    /// The relay listener's configuration it was built from, and the result.
    built: RwLock<Option<(Arc<ServerConfig>, Arc<ServerConfig>)>>,
}

impl std::fmt::Debug for MtlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MtlsConfig")
            .field("trust", &self.trust)
            .finish_non_exhaustive()
    }
}

impl MtlsConfig {
    /// The configuration for `--device-client-ca` (or none: pin-only), with rustls' ring
    /// provider, the relay listener's.
    pub fn new(client_ca: Option<&Path>) -> std::io::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (verifier, trust) = client_verifier(client_ca, provider)?;
        Ok(Self {
            verifier,
            trust,
            built: RwLock::new(None),
        })
    }

    /// How client certificates are trusted (for the startup log line).
    pub fn trust(&self) -> ClientTrust {
        self.trust
    }

    /// The configuration for a new mTLS connection, given the relay listener's current one
    /// (`TlsReloader::current()`).
    pub fn for_main(&self, main: &Arc<ServerConfig>) -> Result<Arc<ServerConfig>, rustls::Error> {
        {
            let built = self.built.read().unwrap_or_else(|e| e.into_inner());
            if let Some((from, config)) = built.as_ref() {
                if Arc::ptr_eq(from, main) {
                    return Ok(config.clone());
                }
            }
        }
        let config = Arc::new(server_config(main, self.verifier.clone())?);
        let mut built = self.built.write().unwrap_or_else(|e| e.into_inner());
        *built = Some((main.clone(), config.clone()));
        Ok(config)
    }
}

/// The SHA-256 fingerprint of the client's leaf certificate, once the handshake is done
/// (`None` before, or when the client sent none — which the mTLS listener never lets
/// through). Works on buffered and unbuffered connections alike (their `CommonState`).
pub fn peer_fingerprint(state: &rustls::CommonState) -> Option<CertFingerprint> {
    let leaf = state.peer_certificates()?.first()?;
    Some(CertFingerprint::of_der(leaf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::identify_device;
    use crate::ids::DomainName;
    use crate::store::{DeviceRecord, MemStore, Store};
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    };
    use rustls::pki_types::PrivateKeyDer;
    use rustls::sign::{CertifiedKey, SingleCertAndKey};
    use rustls::{ClientConfig, ClientConnection, ServerConnection};

    /// A certificate and the key it was made for.
    struct Made {
        der: CertificateDer<'static>,
        key: KeyPair,
    }

    fn ca() -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "posrelay test terminal CA");
        (params.self_signed(&key).expect("CA"), key)
    }

    fn terminal_params(name: &str) -> CertificateParams {
        let mut params = CertificateParams::new(vec![name.to_owned()]).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params
    }

    /// A terminal certificate issued by `issuer`.
    fn issued(name: &str, issuer: &(rcgen::Certificate, KeyPair)) -> Made {
        let key = KeyPair::generate().expect("key");
        let cert = terminal_params(name)
            .signed_by(&key, &issuer.0, &issuer.1)
            .expect("signed");
        Made {
            der: cert.der().clone(),
            key,
        }
    }

    /// A self-signed terminal certificate (a Verifone terminal's own, for example).
    fn self_signed(name: &str) -> Made {
        let key = KeyPair::generate().expect("key");
        let cert = terminal_params(name)
            .self_signed(&key)
            .expect("self-signed");
        Made {
            der: cert.der().clone(),
            key,
        }
    }

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// The relay listener's configuration, as tls.rs builds it from --tls-cert/--tls-key.
    fn main_config() -> (Arc<ServerConfig>, CertificateDer<'static>) {
        let server =
            rcgen::generate_simple_self_signed(vec!["relay.test".to_owned()]).expect("server");
        let key = PrivateKeyDer::Pkcs8(server.key_pair.serialize_der().into());
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![server.cert.der().clone()], key)
            .expect("server config");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        (Arc::new(config), server.cert.der().clone())
    }

    /// A terminal's TLS client: trusts the relay's certificate, presents `cert` and signs
    /// with `key` (which may not be the certificate's: rustls' builder would refuse that,
    /// a terminal with a broken key store would not).
    fn terminal(
        relay_cert: &CertificateDer<'static>,
        cert: Option<(&CertificateDer<'static>, &KeyPair)>,
        tls12_only: bool,
    ) -> ClientConnection {
        let mut roots = RootCertStore::empty();
        roots.add(relay_cert.clone()).expect("root");
        let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
            &[&rustls::version::TLS12]
        } else {
            rustls::DEFAULT_VERSIONS
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots);
        let mut config = match cert {
            None => builder.with_no_client_auth(),
            Some((der, key)) => {
                let key_der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
                let signer =
                    rustls::crypto::ring::sign::any_supported_type(&key_der).expect("signing key");
                let certified = CertifiedKey::new(vec![der.clone()], signer);
                builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(certified)))
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        ClientConnection::new(Arc::new(config), "relay.test".try_into().expect("name"))
            .expect("client")
    }

    /// Runs the handshake in memory; the server's error if it refused.
    fn handshake(
        client: &mut ClientConnection,
        server: &mut ServerConnection,
    ) -> Result<(), rustls::Error> {
        for _ in 0..16 {
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).expect("client writes");
            }
            let mut rd = wire.as_slice();
            while !rd.is_empty() {
                server.read_tls(&mut rd).expect("server reads");
                server.process_new_packets()?;
            }
            let mut wire = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut wire).expect("server writes");
            }
            let mut rd = wire.as_slice();
            while !rd.is_empty() {
                client.read_tls(&mut rd).expect("client reads");
                if let Err(e) = client.process_new_packets() {
                    panic!("the client refused the relay: {e}");
                }
            }
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
        }
        panic!("handshake did not finish");
    }

    struct Listener {
        config: MtlsConfig,
        main: Arc<ServerConfig>,
        relay_cert: CertificateDer<'static>,
    }

    impl Listener {
        fn new(client_ca: Option<&Path>) -> Self {
            let (main, relay_cert) = main_config();
            Self {
                config: MtlsConfig::new(client_ca).expect("mtls config"),
                main,
                relay_cert,
            }
        }

        /// Connects a terminal; the fingerprint the relay saw, or the server's error.
        fn connect(
            &self,
            cert: Option<(&CertificateDer<'static>, &KeyPair)>,
            tls12_only: bool,
        ) -> Result<CertFingerprint, rustls::Error> {
            let mut client = terminal(&self.relay_cert, cert, tls12_only);
            let config = self.config.for_main(&self.main).expect("config");
            let mut server = ServerConnection::new(config).expect("server");
            handshake(&mut client, &mut server)?;
            assert_eq!(server.alpn_protocol(), Some(&b"http/1.1"[..]));
            Ok(peer_fingerprint(&server).expect("a client certificate"))
        }
    }

    /// A scratch file, removed on drop.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn with(name: &str, contents: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("posrelay-mtls-{}-{name}", std::process::id()));
            std::fs::write(&path, contents).expect("write");
            Self(path)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// A store where `der`'s fingerprint is pinned to device 12345678 of acme.
    fn pinned(der: &CertificateDer<'_>) -> (MemStore, DeviceRecord) {
        let store = MemStore::new();
        store
            .create_domain(&DomainName::new("acme").expect("name"))
            .expect("domain");
        store
            .create_store(&crate::store::conformance::store_rec("acme", "s1"))
            .expect("store");
        let mut device = crate::store::conformance::device_rec("acme", "12345678", "s1");
        device.client_cert_sha256 = vec![CertFingerprint::of_der(der)];
        store.create_device(&device).expect("device");
        (store, device)
    }

    #[test]
    fn pin_only_a_pinned_certificate_completes_and_names_its_device() {
        let listener = Listener::new(None);
        assert_eq!(listener.config.trust(), ClientTrust::PinOnly);
        let terminal = self_signed("verifone-p400-1");
        let (store, device) = pinned(&terminal.der);
        for tls12_only in [false, true] {
            let seen = listener
                .connect(Some((&terminal.der, &terminal.key)), tls12_only)
                .expect("handshake");
            assert_eq!(seen, CertFingerprint::of_der(&terminal.der));
            assert_eq!(identify_device(&store, &seen), Ok(device.clone()));
        }
        // Another certificate completes the handshake too, but names no device: 403.
        let stranger = self_signed("stranger");
        let seen = listener
            .connect(Some((&stranger.der, &stranger.key)), false)
            .expect("handshake");
        assert_eq!(
            identify_device(&store, &seen),
            Err(crate::auth::AuthError::CertificateNotPinned)
        );
    }

    #[test]
    fn pin_only_a_client_that_cannot_sign_for_its_certificate_fails_the_handshake() {
        let listener = Listener::new(None);
        let terminal = self_signed("verifone-p400-1");
        let other_key = KeyPair::generate().expect("key");
        for tls12_only in [false, true] {
            let err = listener
                .connect(Some((&terminal.der, &other_key)), tls12_only)
                .expect_err("a signature by the wrong key");
            assert_eq!(
                err,
                rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature),
                "tls12_only={tls12_only}"
            );
        }
    }

    #[test]
    fn a_client_without_a_certificate_fails_in_both_modes() {
        let (ca, _ca_key) = ca();
        let roots = Scratch::with("roots-none.pem", &ca.pem());
        for client_ca in [None, Some(roots.0.as_path())] {
            let listener = Listener::new(client_ca);
            assert_eq!(
                listener.connect(None, false),
                Err(rustls::Error::NoCertificatesPresented),
                "{client_ca:?}"
            );
        }
    }

    #[test]
    fn ca_mode_a_pinned_certificate_issued_by_the_ca_completes() {
        let issuer = ca();
        let roots = Scratch::with("roots-ok.pem", &issuer.0.pem());
        let listener = Listener::new(Some(&roots.0));
        assert_eq!(listener.config.trust(), ClientTrust::CaRoots);
        let terminal = issued("ingenico-axium-1", &issuer);
        let (store, device) = pinned(&terminal.der);
        for tls12_only in [false, true] {
            let seen = listener
                .connect(Some((&terminal.der, &terminal.key)), tls12_only)
                .expect("handshake");
            assert_eq!(identify_device(&store, &seen), Ok(device.clone()));
        }
    }

    #[test]
    fn ca_mode_a_certificate_not_chaining_to_the_ca_fails_the_handshake() {
        let issuer = ca();
        let roots = Scratch::with("roots-strict.pem", &issuer.0.pem());
        let listener = Listener::new(Some(&roots.0));
        // Self-signed, and issued by another CA: neither chains, pinned or not.
        let other_ca = ca();
        for terminal in [self_signed("stranger"), issued("other-ca", &other_ca)] {
            let err = listener
                .connect(Some((&terminal.der, &terminal.key)), false)
                .expect_err("not issued by the CA");
            assert!(
                matches!(err, rustls::Error::InvalidCertificate(_)),
                "{err:?}"
            );
        }
        // The CA's terminal with the wrong key still fails on the signature.
        let terminal = issued("ingenico-axium-1", &issuer);
        let other_key = KeyPair::generate().expect("key");
        assert!(listener
            .connect(Some((&terminal.der, &other_key)), false)
            .is_err());
    }

    #[test]
    fn a_bad_ca_file_is_refused_with_its_name() {
        let empty = Scratch::with("roots-empty.pem", "no certificate here\n");
        let err = MtlsConfig::new(Some(&empty.0)).expect_err("no roots");
        assert!(
            err.to_string().contains("holds no PEM certificate"),
            "{err}"
        );
        assert!(err.to_string().contains("roots-empty.pem"), "{err}");
        let missing = std::env::temp_dir().join("posrelay-mtls-does-not-exist.pem");
        let err = MtlsConfig::new(Some(&missing)).expect_err("missing");
        assert!(
            err.to_string().contains("cannot read --device-client-ca"),
            "{err}"
        );
    }

    #[test]
    fn the_config_follows_the_relay_listeners_certificate_reloads() {
        let listener = Listener::new(None);
        let first = listener.config.for_main(&listener.main).expect("config");
        let again = listener.config.for_main(&listener.main).expect("config");
        assert!(Arc::ptr_eq(&first, &again), "built once per relay config");
        let (reloaded, _) = main_config();
        let next = listener.config.for_main(&reloaded).expect("config");
        assert!(!Arc::ptr_eq(&first, &next), "rebuilt after a reload");
        assert!(Arc::ptr_eq(&next.cert_resolver, &reloaded.cert_resolver));
    }
}
