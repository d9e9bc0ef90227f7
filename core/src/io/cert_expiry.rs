//! When the certificate the relay serves expires: the leaf's `notAfter`, for
//! `posrelay_tls_certificate_expiry_timestamp_seconds` and `posrelay check-config`, so
//! that an alert fires before terminals start refusing the relay.

use std::io;
use std::path::Path;
use x509_cert::der::Decode as _;

/// The leaf (first) certificate's `notAfter` in the PEM chain at `cert_pem`, as unix
/// seconds. The error names the file.
pub fn leaf_not_after(cert_pem: &Path) -> io::Result<u64> {
    let bad = |what: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {what}", cert_pem.display()),
        )
    };
    let file = std::fs::File::open(cert_pem).map_err(|e| bad(e.to_string()))?;
    let leaf = rustls_pemfile::certs(&mut io::BufReader::new(file))
        .next()
        .ok_or_else(|| bad("no certificate in it".into()))?
        .map_err(|e| bad(format!("not PEM: {e}")))?;
    let cert = x509_cert::Certificate::from_der(leaf.as_ref())
        .map_err(|e| bad(format!("not an X.509 certificate: {e}")))?;
    Ok(cert
        .tbs_certificate
        .validity
        .not_after
        .to_unix_duration()
        .as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl req -x509 -newkey ec ... -days 3650`: notAfter Nov 29 17:45:33 2036 GMT.
    const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBgjCCASegAwIBAgIUFRs1oQxAEbH7/yKUKF9UhkaZ5fgwCgYIKoZIzj0EAwIw
FjEUMBIGA1UEAwwLZXhwaXJ5LXRlc3QwHhcNMjYxMjAyMTc0NTMzWhcNMzYxMTI5
MTc0NTMzWjAWMRQwEgYDVQQDDAtleHBpcnktdGVzdDBZMBMGByqGSM49AgEGCCqG
SM49AwEHA0IABKttQ+uVzQSRX/2QcrrrBT7otk1F04g/h78LkmfR90n/hrIeRr1b
hC642tMIgXd6Ar5y6uyzFq/3qQNt8K6VVZajUzBRMB0GA1UdDgQWBBSrIQdOM+1Y
jAwKsOfeXjW2/X2pQzAfBgNVHSMEGDAWgBSrIQdOM+1YjAwKsOfeXjW2/X2pQzAP
BgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0kAMEYCIQDwegvi7T4Q8TGv0JRR
BSWfMC3M0cevRd5KnlIf4uAxzgIhAIEsKWRc6BptZUVw8/HOt2lK46C4scf5Hshg
0hFMhZ7g
-----END CERTIFICATE-----
";

    #[test]
    fn reads_the_leafs_not_after() {
        let dir = std::env::temp_dir().join(format!("posrelay-expiry-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("chain.pem");
        std::fs::write(&path, CERT).unwrap();
        // `date -d "Nov 29 17:45:33 2036 GMT" +%s`
        assert_eq!(leaf_not_after(&path).unwrap(), 2_111_593_533);
        std::fs::write(&path, "not a certificate").unwrap();
        let err = leaf_not_after(&path).unwrap_err().to_string();
        assert!(
            err.contains("chain.pem") && err.contains("no certificate"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
