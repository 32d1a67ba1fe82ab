//! TLS for the servers of a cluster (rustls, ring): the certificate and key an API or data
//! server serves with, and the CA its peers and clients trust. PEM files; the key must be
//! private to its owner like every other secret (see [`crate::secret`]).
//!
//! A cluster is either all TLS or all plain HTTP: an API server given `--tls-ca` calls every
//! data server over HTTPS and checks that the data server's certificate, signed by that CA,
//! names the address it announces (an IP address needs an IP subject alternative name).

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn invalid(path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {what}", path.display()),
    )
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM file, at least one.
pub fn load_certs(path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, format_args!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(
            path,
            "holds no certificate (expected PEM `CERTIFICATE`)",
        ));
    }
    Ok(certs)
}

/// The private key of a PEM file, which only its owner may read.
fn load_key(path: &Path) -> io::Result<PrivateKeyDer<'static>> {
    let pem = crate::secret::read_private(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => io::Error::new(e.kind(), format!("{}: {e}", path.display())),
        _ => e,
    })?;
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| {
        invalid(
            path,
            format_args!("not a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })
}

/// What a server serves with: its certificate chain (`cert`) and key (`key`).
pub fn server_config(cert: &Path, key: &Path) -> io::Result<Arc<rustls::ServerConfig>> {
    let chain = load_certs(cert)?;
    let key = load_key(key)?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(cert, e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| invalid(cert, format_args!("certificate and key do not fit: {e}")))?;
    Ok(Arc::new(config))
}

/// What a client of the cluster trusts: the CA certificates in `ca` (PEM), and nothing else.
pub fn client_config(ca: &Path) -> io::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots
            .add(cert)
            .map_err(|e| invalid(ca, format_args!("not a usable CA certificate: {e}")))?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(ca, e))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn bad_files_are_refused_with_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, ca.cert.pem()).unwrap();
        std::fs::write(&key, ca.signing_key.serialize_pem()).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        server_config(&cert, &key).unwrap();
        client_config(&cert).unwrap();

        // A key others may read.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = server_config(&cert, &key).unwrap_err().to_string();
        assert!(e.contains("chmod 600") || e.contains("readable"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

        // Not PEM; the key of another certificate; a missing file.
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello").unwrap();
        let e = client_config(&junk).unwrap_err().to_string();
        assert!(
            e.contains("junk.pem") && e.contains("no certificate"),
            "{e}"
        );
        let other = rcgen::generate_simple_self_signed(vec!["other".into()]).unwrap();
        std::fs::write(&key, other.signing_key.serialize_pem()).unwrap();
        let e = server_config(&cert, &key).unwrap_err().to_string();
        assert!(e.contains("do not fit"), "{e}");
        assert!(server_config(&dir.path().join("none.pem"), &key).is_err());
    }
}
