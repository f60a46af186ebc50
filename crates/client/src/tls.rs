//! TLS to TURN servers (`turns:` URLs): rustls with the Mozilla root store (`webpki-roots`) plus any CA the
//! application trusts in addition (e.g. the self-signed certificate of a test or LAN server).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::ServerName;

use crate::Error;

/// A client configuration trusting the Mozilla roots and every certificate in `extra_ca_pem` (a PEM file
/// with one or more certificates).
pub(crate) fn client_config(
    extra_ca_pem: Option<&Path>,
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca_pem {
        let bad = |reason: String| Error::Tls(format!("CA file {}: {reason}", path.display()));
        let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let mut n = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| bad(format!("bad PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| bad(format!("unusable certificate: {e}")))?;
            n += 1;
        }
        if n == 0 {
            return Err(bad("no certificate in it".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// The name to send as SNI and to check the certificate against: a DNS name, or an IP address literal.
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, Error> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|e| Error::Tls(format!("`{host}` is not a valid TLS server name: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ca_files() {
        assert!(matches!(
            server_name("turn.example.org"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(matches!(
            server_name("127.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(server_name("[::1]"), Ok(ServerName::IpAddress(_))));
        assert!(server_name("bad name!").is_err());
        assert!(client_config(None).is_ok());
        let dir = std::env::temp_dir().join(format!("sb-client-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "nothing here\n").unwrap();
        let err = client_config(Some(&empty)).unwrap_err().to_string();
        assert!(err.contains("no certificate"), "{err}");
        assert!(client_config(Some(&dir.join("missing.pem"))).is_err());
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let good = dir.join("ca.pem");
        std::fs::write(&good, ck.cert.pem()).unwrap();
        assert!(client_config(Some(&good)).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
