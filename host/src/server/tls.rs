//! TLS termination with rustls: the PEM certificate chain and key of
//! `--tls-cert` / `--tls-key`, re-read on SIGUSR2 so that a renewed
//! certificate is served to new connections while open ones keep theirs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use thiserror::Error;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

/// Why a certificate or key cannot be served.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read or holds no PEM item of the expected kind.
    #[error("--{flag} {}: {reason}", path.display())]
    File {
        /// `tls-cert` or `tls-key`.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the pair (unsupported key, key not matching the
    /// certificate, ...).
    #[error("--tls-cert {} with --tls-key {}: {source}", cert.display(), key.display())]
    Rejected {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        source: rustls::Error,
    },
}

/// The server's TLS state: where the files are and the acceptor built from
/// them, replaced by a successful reload.
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    acceptor: RwLock<TlsAcceptor>,
}

impl Tls {
    /// Load the certificate chain and key; any problem is an error naming
    /// the flag and the file.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let acceptor = acceptor(cert, key)?;
        Ok(Tls {
            cert: cert.to_owned(),
            key: key.to_owned(),
            acceptor: RwLock::new(acceptor),
        })
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Read the files again and serve them to new connections; on error the
    /// current certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let acceptor = acceptor(&self.cert, &self.key)?;
        *self.acceptor.write().unwrap_or_else(|e| e.into_inner()) = acceptor;
        Ok(())
    }
}

/// A rustls acceptor (ring provider, TLS 1.2 and 1.3, HTTP/1.1 by ALPN).
fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let file_error = |flag, path: &Path, reason: String| TlsError::File {
        flag,
        path: path.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|error| file_error("tls-cert", cert, pem_reason(error)))?;
    if chain.is_empty() {
        return Err(file_error(
            "tls-cert",
            cert,
            "no PEM certificate (BEGIN CERTIFICATE) in the file".into(),
        ));
    }
    let private_key = PrivateKeyDer::from_pem_file(key)
        .map_err(|error| file_error("tls-key", key, pem_reason(error)))?;
    let rejected = |source| TlsError::Rejected {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(rejected)?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(rejected)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A PEM reading error in words.
fn pem_reason(error: rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match error {
        Error::NoItemsFound => "no PEM item of the expected kind in the file".into(),
        Error::Io(error) => format!("cannot read the file: {error}"),
        other => format!("not valid PEM: {other:?}"),
    }
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn self_signed(dir: &Path, prefix: &str) -> (PathBuf, PathBuf) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        (
            write(dir, &format!("{prefix}.crt"), &cert.cert.pem()),
            write(
                dir,
                &format!("{prefix}.key"),
                &cert.signing_key.serialize_pem(),
            ),
        )
    }

    #[test]
    fn a_valid_pair_loads_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(dir.path(), "a");
        let tls = Tls::load(&cert, &key).unwrap();
        assert!(tls.reload().is_ok());
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(dir.path(), "a");
        let (_, other_key) = self_signed(dir.path(), "b");
        let garbage = write(dir.path(), "garbage.pem", "not pem at all\n");
        let missing = dir.path().join("missing.pem");

        let error = Tls::load(&missing, &key).err().unwrap().to_string();
        assert!(
            error.starts_with("--tls-cert ") && error.contains("cannot read"),
            "{error}"
        );
        let error = Tls::load(&garbage, &key).err().unwrap().to_string();
        assert!(error.contains("no PEM certificate"), "{error}");
        let error = Tls::load(&cert, &garbage).err().unwrap().to_string();
        assert!(error.starts_with("--tls-key "), "{error}");
        let error = Tls::load(&cert, &other_key).err().unwrap().to_string();
        assert!(error.contains("with --tls-key"), "{error}");
    }

    #[test]
    fn a_failed_reload_keeps_serving_the_old_pair() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(dir.path(), "a");
        let tls = Tls::load(&cert, &key).unwrap();
        std::fs::write(&cert, "broken").unwrap();
        assert!(tls.reload().is_err());
        // The acceptor built at load is still handed out.
        let _acceptor = tls.acceptor();
    }
}
