//! faultline's own certificate authority (SPEC §8): created on first use
//! under `[ca] dir` (`ca.pem`, and `ca-key.pem` readable by its owner
//! only), read again by every later start, and the leaf certificates it
//! signs: one per server name, for intercepted `CONNECT`s and for
//! listeners with `tls = { generate = [...] }`.
//!
//! Leaves follow what mitmproxy learned clients insist on: the name in the
//! subject alternative names (an IP address as an IP SAN) and the common
//! name, `serverAuth` in the extended key usage, a validity that starts two
//! days back (clocks are off) and lasts [`LEAF_LIFETIME`], well under the
//! 398 days browsers and Apple platforms accept, and a random serial. All
//! leaves share one key made at start, so a new name costs one signature.
//! Leaves are cached by name, at most [`LEAF_CACHE`] of them, the least
//! recently used dropped first, and minted again after [`LEAF_REFRESH`].

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::{CertifiedKey, SigningKey};
use rustls::ServerConfig;

/// The CA certificate's file in `[ca] dir`.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA key's file in `[ca] dir`, mode 0600.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// The most leaves kept, by server name (one leaf is about 1 KiB of DER
/// plus its rustls config).
pub const LEAF_CACHE: usize = 1024;
/// How long a leaf is valid from its start.
pub const LEAF_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
/// How far back a certificate's validity starts, for clients whose clock
/// is behind.
const BACKDATE: Duration = Duration::from_secs(2 * 24 * 3600);
/// A cached leaf older than this is minted again, long before it expires.
pub const LEAF_REFRESH: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long the CA is valid.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// The CA's name, which every leaf names as its issuer.
const CA_COMMON_NAME: &str = "faultline CA";
const CA_ORGANIZATION: &str = "faultline";
/// The longest common name X.509 allows; a longer server name is in the
/// SAN only.
const MAX_COMMON_NAME: usize = 64;
/// What intercepted connections and generated listeners offer in ALPN.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A loaded CA, ready to sign leaves.
pub struct Ca {
    cert_path: PathBuf,
    cert_pem: String,
    /// The CA as rcgen signs with it: the same name and key as `ca.pem`.
    issuer: rcgen::Certificate,
    key: KeyPair,
    /// The key every leaf certifies.
    leaf_key: KeyPair,
    leaf_signer: Arc<dyn SigningKey>,
    cache: Mutex<LeafCache>,
    serials: AtomicU64,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Reads the CA in `dir`, or creates it there if neither file exists.
    /// An error names the file and says what to do.
    pub fn open(dir: &Path) -> Result<Arc<Ca>, String> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let (key, issuer, cert_pem) = match (cert_path.exists(), key_path.exists()) {
            (false, false) => create(dir, &cert_path, &key_path)?,
            (true, true) => load(&cert_path, &key_path)?,
            (true, false) | (false, true) => {
                return Err(format!(
                    "the CA in {dir:?} is incomplete: {CA_CERT_FILE} and {CA_KEY_FILE} go together; remove the one left to make a new CA"
                ))
            }
        };
        let leaf_key = KeyPair::generate().map_err(|e| format!("cannot make a leaf key: {e}"))?;
        let leaf_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let leaf_signer = crate::tls::provider()
            .key_provider
            .load_private_key(leaf_der)
            .map_err(|e| format!("cannot use the leaf key: {e}"))?;
        Ok(Arc::new(Ca {
            cert_pem,
            cert_path,
            issuer,
            key,
            leaf_key,
            leaf_signer,
            cache: Mutex::new(LeafCache::default()),
            serials: AtomicU64::new(0),
        }))
    }

    /// Where `ca.pem` is.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.cert_pem
    }

    /// How many leaves are cached now.
    pub fn cached_leaves(&self) -> usize {
        self.lock().entries.len()
    }

    /// A rustls server config serving the leaf for `name` (cached), with
    /// ALPN `h2` and `http/1.1`.
    pub fn server_config(&self, name: &str) -> Result<Arc<ServerConfig>, String> {
        let name = name.trim_start_matches('[').trim_end_matches(']');
        let now = Instant::now();
        if let Some(config) = self.lock().get(name, now) {
            return Ok(config);
        }
        // Signed outside the lock: other names' handshakes go on meanwhile.
        let leaf = self.mint(&[name.to_owned()])?;
        let config = served_config(leaf);
        self.lock().insert(name, Arc::clone(&config), now);
        Ok(config)
    }

    /// A leaf for all of `names` (not cached), for a listener's
    /// `tls = { generate = [...] }`.
    pub fn leaf_for(&self, names: &[String]) -> Result<Arc<CertifiedKey>, String> {
        self.mint(names)
    }

    fn mint(&self, names: &[String]) -> Result<Arc<CertifiedKey>, String> {
        let first = names.first().ok_or("a leaf needs a name")?;
        let mut params = CertificateParams::new(names.to_vec())
            .map_err(|e| format!("{first:?} cannot be a certificate's name: {e}"))?;
        let mut dn = DistinguishedName::new();
        if first.len() <= MAX_COMMON_NAME {
            dn.push(DnType::CommonName, first.as_str());
        }
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        params.not_before = at(now - BACKDATE)?;
        params.not_after = at(now + LEAF_LIFETIME)?;
        params.serial_number = Some(self.serial(now));
        let leaf = params
            .signed_by(&self.leaf_key, &self.issuer, &self.key)
            .map_err(|e| format!("cannot sign a certificate for {first:?}: {e}"))?;
        Ok(Arc::new(CertifiedKey::new(
            vec![leaf.der().clone()],
            Arc::clone(&self.leaf_signer),
        )))
    }

    /// A serial no other leaf of this CA has: the time, a counter, and a
    /// positive first byte (RFC 5280 §4.1.2.2: positive, at most 20 bytes).
    fn serial(&self, now: SystemTime) -> SerialNumber {
        let nanos = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let count = self.serials.fetch_add(1, Ordering::Relaxed);
        let mut bytes = Vec::with_capacity(17);
        bytes.push(0x01);
        bytes.extend_from_slice(&nanos.to_be_bytes());
        bytes.extend_from_slice(&count.to_be_bytes());
        SerialNumber::from(bytes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LeafCache> {
        // A panic elsewhere while holding it leaves a cache still usable.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What `faultline ca` prints: where the CA certificate is, and the lines
/// that make common clients trust it.
pub fn trust_instructions(cert: &Path) -> String {
    let absolute = std::path::absolute(cert).unwrap_or_else(|_| cert.to_owned());
    let path = absolute.display();
    format!(
        "faultline CA certificate: {path}\n\
         \n\
         Trust it in the clients whose HTTPS faultline intercepts (HTTPS_PROXY=http://127.0.0.1:3128):\n\
         \n\
         # boto3, the AWS CLI and the AWS SDKs\n\
         export AWS_CA_BUNDLE={path}\n\
         # Python requests\n\
         export REQUESTS_CA_BUNDLE={path}\n\
         # curl, OpenSSL, Go and Rust (rustls-native-certs) clients; this replaces the system's roots\n\
         export SSL_CERT_FILE={path}\n\
         curl --cacert {path} -x http://127.0.0.1:3128 https://…\n\
         # Node.js\n\
         export NODE_EXTRA_CA_CERTS={path}\n\
         # Java: a copy of the JDK's trust store with this CA added (its password: changeit)\n\
         cp \"$JAVA_HOME/lib/security/cacerts\" faultline-cacerts.jks\n\
         keytool -importcert -noprompt -alias faultline -file {path} -keystore faultline-cacerts.jks -storepass changeit\n\
         java -Djavax.net.ssl.trustStore=faultline-cacerts.jks -Djavax.net.ssl.trustStorePassword=changeit …\n\
         \n\
         `faultline ca --pem` prints the certificate itself.\n"
    )
}

/// A server config that serves `leaf` whatever the client asks.
fn served_config(leaf: Arc<CertifiedKey>) -> Arc<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| ServerConfig::builder());
    let mut config = builder
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Fixed(leaf)));
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

/// Leaves by server name, least recently used dropped past [`LEAF_CACHE`].
#[derive(Default)]
struct LeafCache {
    entries: HashMap<String, CachedLeaf>,
    /// Bumped on every use; an entry's `used` orders it.
    clock: u64,
}

struct CachedLeaf {
    config: Arc<ServerConfig>,
    minted: Instant,
    used: u64,
}

impl LeafCache {
    fn get(&mut self, name: &str, now: Instant) -> Option<Arc<ServerConfig>> {
        self.clock += 1;
        let clock = self.clock;
        let entry = self.entries.get_mut(name)?;
        if now.saturating_duration_since(entry.minted) >= LEAF_REFRESH {
            return None;
        }
        entry.used = clock;
        Some(Arc::clone(&entry.config))
    }

    fn insert(&mut self, name: &str, config: Arc<ServerConfig>, now: Instant) {
        if self.entries.len() >= LEAF_CACHE && !self.entries.contains_key(name) {
            // A scan of at most LEAF_CACHE entries, only when a new name
            // comes to a full cache: far cheaper than the signature it follows.
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, entry)| entry.used)
                .map(|(name, _)| name.clone());
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        self.clock += 1;
        self.entries.insert(
            name.to_owned(),
            CachedLeaf {
                config,
                minted: now,
                used: self.clock,
            },
        );
    }
}

/// The CA's parameters: its name, its powers, its validity from `now`.
fn ca_params(now: SystemTime) -> Result<CertificateParams, String> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, CA_ORGANIZATION);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = at(now - BACKDATE)?;
    params.not_after = at(now + CA_LIFETIME)?;
    Ok(params)
}

/// Makes a new CA in `dir`: the key first, written with mode 0600 and
/// never replacing a file, then the certificate.
fn create(
    dir: &Path,
    cert: &Path,
    key: &Path,
) -> Result<(KeyPair, rcgen::Certificate, String), String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create the CA folder {dir:?} ([ca] dir): {e}"))?;
    let key_pair = KeyPair::generate().map_err(|e| format!("cannot make the CA key: {e}"))?;
    let certificate = ca_params(SystemTime::now())?
        .self_signed(&key_pair)
        .map_err(|e| format!("cannot sign the CA certificate: {e}"))?;
    write_new(key, key_pair.serialize_pem().as_bytes(), 0o600)?;
    let pem = certificate.pem();
    write_new(cert, pem.as_bytes(), 0o644)?;
    tracing::info!(cert = %cert.display(), "made faultline's CA; see `faultline ca` to trust it");
    Ok((key_pair, certificate, pem))
}

/// Writes a file that must not exist yet, with `mode` from its creation.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), String> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(path)
        .map_err(|e| format!("cannot write {path:?} ([ca] dir): {e}"))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {path:?} ([ca] dir): {e}"))
}

/// Reads a CA made before: the key, and a certificate that is the CA's
/// own (its name, and the key's public half).
fn load(cert: &Path, key: &Path) -> Result<(KeyPair, rcgen::Certificate, String), String> {
    use x509_cert::der::{Decode, Encode};
    let remedy =
        "remove ca.pem and ca-key.pem to make a new CA (clients must then trust the new one)";
    let key_pem = crate::files::read_bounded(key, crate::tls::MAX_PEM_BYTES, "the CA key")?;
    let key_pem = String::from_utf8(key_pem)
        .map_err(|_| format!("the CA key {key:?} is not PEM text; {remedy}"))?;
    let key_pair = KeyPair::from_pem(&key_pem)
        .map_err(|e| format!("the CA key {key:?} cannot be read ({e}); {remedy}"))?;
    let stored_pem =
        crate::files::read_bounded(cert, crate::tls::MAX_PEM_BYTES, "the CA certificate")?;
    let stored_pem = String::from_utf8(stored_pem)
        .map_err(|_| format!("the CA certificate {cert:?} is not PEM text; {remedy}"))?;
    let stored = CertificateDer::from_pem_slice(stored_pem.as_bytes()).map_err(|e| {
        format!("the CA certificate {cert:?} is not a readable PEM certificate ({e}); {remedy}")
    })?;
    let stored = x509_cert::Certificate::from_der(&stored)
        .map_err(|e| format!("the CA certificate {cert:?} cannot be read ({e}); {remedy}"))?;
    let spki = stored
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes();
    if spki != key_pair.public_key_raw() {
        return Err(format!(
            "the CA certificate {cert:?} is not for the key in {key:?}; {remedy}"
        ));
    }
    let now = SystemTime::now();
    let not_after =
        SystemTime::UNIX_EPOCH + stored.tbs_certificate.validity.not_after.to_unix_duration();
    if now > not_after {
        return Err(format!("the CA certificate {cert:?} has expired; {remedy}"));
    }
    // rcgen signs leaves with a certificate it makes itself: the same name
    // and key as the stored one, which is what a leaf's chain checks.
    let issuer = ca_params(now)?
        .self_signed(&key_pair)
        .map_err(|e| format!("cannot use the CA key {key:?}: {e}"))?;
    let made = x509_cert::Certificate::from_der(issuer.der())
        .map_err(|e| format!("cannot read back the CA certificate: {e}"))?;
    let name = |c: &x509_cert::Certificate| c.tbs_certificate.subject.to_der().ok();
    if name(&made) != name(&stored) {
        return Err(format!(
            "the CA certificate {cert:?} was not made by faultline (its subject differs); {remedy}"
        ));
    }
    // The stored certificate is the one clients trust: its PEM is shown.
    Ok((key_pair, issuer, stored_pem))
}

/// `time` as rcgen's date.
fn at(time: SystemTime) -> Result<time::OffsetDateTime, String> {
    let secs = match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(since) => since.as_secs() as i64,
        Err(before) => -(before.duration().as_secs() as i64),
    };
    time::OffsetDateTime::from_unix_timestamp(secs).map_err(|e| format!("bad date: {e}"))
}

#[cfg(test)]
mod tests {
    use x509_cert::der::Decode;

    use super::*;

    fn minted(ca: &Ca, name: &str) -> x509_cert::Certificate {
        let pair = ca.mint(&[name.to_owned()]).unwrap();
        x509_cert::Certificate::from_der(&pair.cert[0]).unwrap()
    }

    #[test]
    fn a_ca_is_made_once_and_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("nested/ca");
        let first = Ca::open(&ca_dir).unwrap();
        let pem = std::fs::read_to_string(ca_dir.join(CA_CERT_FILE)).unwrap();
        assert_eq!(first.pem(), pem);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(ca_dir.join(CA_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = Ca::open(&ca_dir).unwrap();
        assert_eq!(again.pem(), pem, "the same CA, not a new one");
        // A leaf of the second load names the first's subject as issuer.
        let stored = x509_cert::Certificate::from_der(
            &CertificateDer::from_pem_slice(pem.as_bytes()).unwrap(),
        )
        .unwrap();
        let leaf = minted(&again, "example.test");
        assert_eq!(leaf.tbs_certificate.issuer, stored.tbs_certificate.subject);
    }

    #[test]
    fn leaves_follow_what_clients_insist_on() {
        use x509_cert::ext::pkix::{ExtendedKeyUsage, SubjectAltName};
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::open(dir.path()).unwrap();
        let leaf = minted(&ca, "dynamodb.us-east-1.amazonaws.com");
        let tbs = &leaf.tbs_certificate;
        assert!(tbs
            .subject
            .to_string()
            .contains("CN=dynamodb.us-east-1.amazonaws.com"));
        let validity = &tbs.validity;
        let lifetime =
            validity.not_after.to_unix_duration() - validity.not_before.to_unix_duration();
        assert_eq!(lifetime, LEAF_LIFETIME + BACKDATE);
        assert!(lifetime < Duration::from_secs(398 * 24 * 3600));
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        assert!(validity.not_before.to_unix_duration() + BACKDATE <= now + Duration::from_secs(5));
        let (_, san) = leaf
            .tbs_certificate
            .get::<SubjectAltName>()
            .unwrap()
            .unwrap();
        assert_eq!(format!("{:?}", san.0).matches("DnsName").count(), 1);
        let (_, eku) = leaf
            .tbs_certificate
            .get::<ExtendedKeyUsage>()
            .unwrap()
            .unwrap();
        assert_eq!(
            eku.0,
            vec![x509_cert::der::asn1::ObjectIdentifier::new_unwrap(
                "1.3.6.1.5.5.7.3.1"
            )]
        );
        let ip = minted(&ca, "127.0.0.1");
        let (_, san) = ip.tbs_certificate.get::<SubjectAltName>().unwrap().unwrap();
        assert!(format!("{:?}", san.0).contains("IpAddress"), "{san:?}");
        // Every leaf has a serial of its own.
        assert_ne!(
            minted(&ca, "a.test").tbs_certificate.serial_number,
            minted(&ca, "a.test").tbs_certificate.serial_number
        );
    }

    #[test]
    fn leaves_are_cached_by_name_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::open(dir.path()).unwrap();
        let one = ca.server_config("a.test").unwrap();
        let again = ca.server_config("a.test").unwrap();
        assert!(Arc::ptr_eq(&one, &again));
        assert!(!Arc::ptr_eq(&one, &ca.server_config("b.test").unwrap()));
        assert_eq!(ca.cached_leaves(), 2);
        let mut cache = LeafCache::default();
        let now = Instant::now();
        for i in 0..LEAF_CACHE + 10 {
            cache.insert(&format!("{i}.test"), Arc::clone(&one), now);
            // The first name stays in use, so it stays.
            assert!(cache.get("0.test", now).is_some());
        }
        assert_eq!(cache.entries.len(), LEAF_CACHE);
        assert!(
            cache.get("1.test", now).is_none(),
            "least recently used, dropped"
        );
        assert!(cache
            .get(&format!("{}.test", LEAF_CACHE + 9), now)
            .is_some());
        // An old leaf is minted again.
        assert!(cache.get("0.test", now + LEAF_REFRESH).is_none());
    }

    #[test]
    fn a_broken_ca_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        Ca::open(dir.path()).unwrap();
        let key = dir.path().join(CA_KEY_FILE);
        let cert = dir.path().join(CA_CERT_FILE);
        let good_key = std::fs::read(&key).unwrap();
        std::fs::write(&key, "not a key").unwrap();
        let error = Ca::open(dir.path()).unwrap_err();
        assert!(
            error.contains("cannot be read") && error.contains("remove ca.pem and ca-key.pem"),
            "{error}"
        );
        // A key of another CA.
        let other = tempfile::tempdir().unwrap();
        Ca::open(other.path()).unwrap();
        std::fs::copy(other.path().join(CA_KEY_FILE), &key).unwrap();
        let error = Ca::open(dir.path()).unwrap_err();
        assert!(error.contains("is not for the key"), "{error}");
        std::fs::write(&key, good_key).unwrap();
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(Ca::open(dir.path()).unwrap_err().contains("cannot be read"));
        std::fs::remove_file(&cert).unwrap();
        assert!(Ca::open(dir.path()).unwrap_err().contains("is incomplete"));
    }

    #[cfg(unix)]
    #[test]
    fn an_unwritable_folder_is_named() {
        let error = Ca::open(Path::new("/proc/faultline-ca")).unwrap_err();
        assert!(
            error.starts_with("cannot create the CA folder \"/proc/faultline-ca\""),
            "{error}"
        );
    }
}
