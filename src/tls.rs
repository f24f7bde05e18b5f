//! TLS both ways, with rustls and its `ring` provider: the certificates
//! faultline's listeners serve (checked when read, swapped whole on reload),
//! and the trust and identity it gives upstreams (the system's roots plus a
//! `tls.ca`, an optional client certificate, the name it checks).
//!
//! Everything here reads files through [`crate::files::read_bounded`]
//! (regular files of at most [`MAX_PEM_BYTES`]) and reports a problem as
//! one sentence naming the file; the config's load step places it at its
//! line.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tracing::warn;

/// The largest certificate, key or CA file: a chain or a bundle, not a
/// data set (the system's whole CA bundle is about 220 KiB).
pub const MAX_PEM_BYTES: u64 = 1 << 20;

/// What faultline's listeners offer in ALPN, most preferred first.
const SERVED_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The one crypto provider: `ring` (assembly AES-GCM and ChaCha20 on
/// x86-64 and ARM, and no C toolchain or CMake to build, unlike aws-lc-rs).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}

// ---------------------------------------------------------------------------
// Reading PEM files.

/// Every certificate in the PEM file at `path`, in order; `what` names the
/// setting in errors (`tls.cert`, `tls.ca`…).
pub fn read_certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = crate::files::read_bounded(path, MAX_PEM_BYTES, what)?;
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {path:?} is not a readable PEM file: {e}"))?;
    if certificates.is_empty() {
        return Err(format!(
            "{what} {path:?} holds no certificate (expected PEM \"BEGIN CERTIFICATE\" blocks)"
        ));
    }
    Ok(certificates)
}

/// The private key in the PEM file at `path` (PKCS#8, PKCS#1 or SEC1).
pub fn read_private_key(path: &Path, what: &str) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = crate::files::read_bounded(path, MAX_PEM_BYTES, what)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            format!("{what} {path:?} holds no private key (expected a PEM \"PRIVATE KEY\" block)")
        }
        e => format!("{what} {path:?} is not a readable PEM key: {e}"),
    })
}

/// A certificate chain and its key, as a listener serves them: both read,
/// the key usable, matching the first certificate, which is valid now.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    load_identity(cert, key, "tls.cert", "tls.key")
}

/// [`load_certified_key`] for any pair of settings (a client certificate).
fn load_identity(
    cert: &Path,
    key: &Path,
    cert_what: &str,
    key_what: &str,
) -> Result<Arc<CertifiedKey>, String> {
    let chain = read_certificates(cert, cert_what)?;
    let private_key = read_private_key(key, key_what)?;
    check_validity(&chain[0], cert, cert_what, SystemTime::now())?;
    let certified =
        CertifiedKey::from_der(chain, private_key, &provider()).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => {
                format!("{key_what} {key:?} does not match the certificate in {cert_what} {cert:?}")
            }
            e => format!("{key_what} {key:?} cannot be used: {e}"),
        })?;
    Ok(Arc::new(certified))
}

/// Refuses a certificate that has expired or is not valid yet at `now`.
fn check_validity(
    certificate: &CertificateDer<'_>,
    path: &Path,
    what: &str,
    now: SystemTime,
) -> Result<(), String> {
    use x509_cert::der::Decode;
    let parsed = x509_cert::Certificate::from_der(certificate)
        .map_err(|e| format!("{what} {path:?}: the first certificate cannot be read: {e}"))?;
    let validity = parsed.tbs_certificate.validity;
    let at = |since_epoch| SystemTime::UNIX_EPOCH + since_epoch;
    let not_before = at(validity.not_before.to_unix_duration());
    let not_after = at(validity.not_after.to_unix_duration());
    let date = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    if now > not_after {
        return Err(format!(
            "{what} {path:?}: the certificate expired on {}",
            date(not_after)
        ));
    }
    if now < not_before {
        return Err(format!(
            "{what} {path:?}: the certificate is not valid until {}",
            date(not_before)
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Serving: a listener's certificate.

/// The certificate a TLS listener serves. Handshakes read the current one
/// (one atomic load); a reload reads the files again and, only if they are
/// good, swaps the new pair in whole.
#[derive(Debug)]
pub struct ServedCertificate {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// Made in memory (`tls = { generate = [...] }`): no files to read again.
    generated: bool,
}

impl ServedCertificate {
    /// Reads and checks the pair; an error says which file and why.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, String> {
        let current = load_certified_key(cert, key)?;
        Ok(Arc::new(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: ArcSwap::new(current),
            generated: false,
        }))
    }

    /// A pair made in memory, signed by the CA whose certificate is at
    /// `ca_cert` (named in messages); a reload keeps it.
    pub fn generated(pair: Arc<CertifiedKey>, ca_cert: &Path) -> Arc<Self> {
        Arc::new(Self {
            cert: ca_cert.to_owned(),
            key: ca_cert.to_owned(),
            current: ArcSwap::new(pair),
            generated: true,
        })
    }

    /// Reads the files again: the pair to [`install`](Self::install), or
    /// why it cannot be (the one serving stays). A generated pair stays.
    pub fn read_again(&self) -> Result<Arc<CertifiedKey>, String> {
        if self.generated {
            return Ok(self.serving());
        }
        load_certified_key(&self.cert, &self.key)
    }

    /// Serves `pair` from the next handshake on. Open connections keep the
    /// certificate they were made with.
    pub fn install(&self, pair: Arc<CertifiedKey>) {
        self.current.store(pair);
    }

    /// The pair served now.
    pub fn serving(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// The certificate file, for messages.
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }

    /// A rustls server config serving this certificate, offering h2 and
    /// HTTP/1.1.
    pub fn server_config(self: &Arc<Self>) -> Arc<ServerConfig> {
        // The provider's defaults (TLS 1.2 and 1.3) are always supported.
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|_| ServerConfig::builder());
        let mut config = builder
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = SERVED_ALPN.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

impl ResolvesServerCert for ServedCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Why a client's TLS handshake with a listener failed
/// (`faultline_tls_handshake_errors_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// No handshake within `header_timeout`: a silent or trickling client.
    Timeout,
    /// The first byte is not a TLS handshake record: plain HTTP, or garbage.
    NotTls,
    /// The client closed the connection before the handshake was done.
    Closed,
    /// The handshake broke: no common version or cipher, a bad message, an
    /// alert from the client (such as a certificate it does not trust).
    Protocol,
}

impl HandshakeFailure {
    pub const ALL: [HandshakeFailure; 4] = [
        HandshakeFailure::Timeout,
        HandshakeFailure::NotTls,
        HandshakeFailure::Closed,
        HandshakeFailure::Protocol,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::NotTls => "not_tls",
            HandshakeFailure::Closed => "closed",
            HandshakeFailure::Protocol => "protocol",
        }
    }
}

// ---------------------------------------------------------------------------
// Connecting: an upstream's trust and identity.

/// How faultline checks an `https://` upstream, and who it says it is
/// (the upstream's `tls` table). Paths are already resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamTlsSettings {
    /// PEM certificates trusted besides the system's roots.
    pub ca: Option<PathBuf>,
    /// The name sent in SNI and checked against the certificate; the
    /// url's host when absent.
    pub server_name: Option<String>,
    /// A client certificate chain and its key, for upstreams that require
    /// mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// `false`: any certificate is accepted (with a warning at start).
    pub verify: bool,
}

/// An upstream's TLS, ready for every connection: the rustls config and
/// the name to ask for.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

impl UpstreamTls {
    /// Builds the client side for an upstream whose url names `host`,
    /// speaking the protocols in `alpn`. Reads `ca`, the client certificate
    /// and the system's roots (once per process).
    pub fn new(
        settings: &UpstreamTlsSettings,
        host: &str,
        alpn: &[&[u8]],
    ) -> Result<UpstreamTls, String> {
        let name = settings.server_name.as_deref().unwrap_or(host);
        let server_name = server_name(name)?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("no TLS version is available: {e}"))?;
        let builder = if settings.verify {
            let mut roots = RootCertStore::empty();
            // An entry rustls cannot parse is skipped, as a browser would.
            roots.add_parsable_certificates(system_roots().iter().cloned());
            if let Some(ca) = &settings.ca {
                for certificate in read_certificates(ca, "tls.ca")? {
                    roots.add(certificate).map_err(|e| {
                        format!("tls.ca {ca:?} holds a certificate that cannot be trusted: {e}")
                    })?;
                }
            }
            if roots.is_empty() {
                return Err(
                    "no certificate to trust: the system has no CA roots; give tls.ca".to_owned(),
                );
            }
            builder.with_root_certificates(roots)
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(
                    provider().signature_verification_algorithms,
                )))
        };
        let mut config = match (&settings.client_cert, &settings.client_key) {
            (Some(cert), Some(key)) => {
                let identity = load_identity(cert, key, "tls.client_cert", "tls.client_key")?;
                builder
                    .with_client_auth_cert(identity.cert.clone(), private_key_again(key)?)
                    .map_err(|e| format!("tls.client_key {key:?} cannot be used: {e}"))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err("give both tls.client_cert and tls.client_key, or neither".to_owned()),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(UpstreamTls {
            config: Arc::new(config),
            server_name,
        })
    }
}

/// The key of a client certificate, read again for rustls's builder (which
/// takes the DER key, not the checked pair).
fn private_key_again(key: &Path) -> Result<PrivateKeyDer<'static>, String> {
    read_private_key(key, "tls.client_key")
}

/// `name` as rustls's server name: a DNS name or an IP address.
pub fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    // An IPv6 authority comes bracketed.
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(bare.to_owned()).map_err(|_| {
        format!("{name:?} is not a valid TLS server name (a DNS name or an IP address)")
    })
}

/// The system's trusted roots (the OS store, as rustls-native-certs finds
/// it: `SSL_CERT_FILE`/`SSL_CERT_DIR` or the distribution's bundle), read
/// once. Unreadable entries are logged once and skipped.
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        if !found.errors.is_empty() {
            warn!(
                errors = found.errors.len(),
                first = %found.errors[0],
                "some of the system's CA certificates could not be read"
            );
        }
        found.certs
    })
}

/// `tls.verify = false`: every certificate is taken as the upstream's,
/// though the handshake's signatures are still checked (the key exchange
/// stays sound; only the identity is not).
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_take_dns_names_and_ip_addresses() {
        assert!(server_name("orders.internal").is_ok());
        assert!(server_name("127.0.0.1").is_ok());
        assert!(server_name("[::1]").is_ok());
        assert!(server_name("not a name").is_err());
    }

    #[test]
    fn a_missing_file_is_named() {
        let error = read_certificates(Path::new("/nonexistent/cert.pem"), "tls.cert").unwrap_err();
        assert!(
            error.starts_with("cannot read tls.cert \"/nonexistent/cert.pem\""),
            "{error}"
        );
    }
}
