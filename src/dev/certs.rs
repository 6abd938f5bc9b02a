//! Stage: development PKI. rcgen-made certificates for `lienthong demo`, `lienthong certs init` and the
//! tests: a CA, a server certificate, one client certificate per agency, and a CRL. Production brokers
//! use their national PKI instead; nothing here is on the request path.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// A certificate-generation problem.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters or a PEM input.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A certificate and its private key, both PEM, with the facts tests and the registry need.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM (PKCS#8).
    pub key_pem: String,
    /// Serial number bytes (as in a CRL entry).
    pub serial: Vec<u8>,
    /// SHA-256 fingerprint, lower-case hex.
    pub fingerprint: String,
}

/// A certificate authority able to issue leaves and CRLs.
pub struct CertAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

/// Validity window of a client certificate, relative to now.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// Start, relative to now (negative = in the past).
    pub from: Duration,
    /// End, relative to now.
    pub to: Duration,
}

impl Validity {
    /// Valid from an hour ago for `days` days.
    pub fn days(days: i64) -> Self {
        Self {
            from: Duration::hours(-1),
            to: Duration::days(days),
        }
    }

    /// Expired: valid from 30 days ago until yesterday.
    pub fn expired() -> Self {
        Self {
            from: Duration::days(-30),
            to: Duration::days(-1),
        }
    }
}

fn random_serial() -> Vec<u8> {
    let mut bytes = [0u8; 16];
    fastrand::fill(&mut bytes);
    bytes[0] &= 0x7f; // positive, as RFC 5280 asks
    bytes[0] |= 0x01; // and no leading zero byte to trim
    bytes.to_vec()
}

fn dn(common_name: &str, organization: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CountryName, "VN");
    dn.push(DnType::OrganizationName, organization);
    dn.push(DnType::CommonName, common_name);
    dn
}

impl CertAuthority {
    /// A fresh self-signed CA, valid ten years.
    pub fn generate(common_name: &str) -> Result<Self, CertError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(common_name, "lienthong development PKI");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(3650);
        params.serial_number = Some(SerialNumber::from(random_serial()));
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// Load a CA written earlier by [`CertAuthority::write`].
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Self {
            issuer,
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    fn issue(&self, mut params: CertificateParams) -> Result<IssuedCert, CertError> {
        let serial = random_serial();
        params.serial_number = Some(SerialNumber::from(serial.clone()));
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            fingerprint: crate::identity::fingerprint(cert.der()),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial,
        })
    }

    /// A server certificate for the given DNS names and IP addresses, valid a year.
    pub fn issue_server(&self, names: &[&str]) -> Result<IssuedCert, CertError> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names.clone())?;
        params.distinguished_name = dn(
            names.first().map(String::as_str).unwrap_or("lienthong"),
            "lienthong",
        );
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(365);
        self.issue(params)
    }

    /// A client certificate whose subject is `CN=<common_name>, O=<organization>, C=VN`.
    pub fn issue_client(
        &self,
        common_name: &str,
        organization: &str,
        validity: Validity,
    ) -> Result<IssuedCert, CertError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(common_name, organization);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = OffsetDateTime::now_utc();
        params.not_before = now + validity.from;
        params.not_after = now + validity.to;
        self.issue(params)
    }

    /// An EU DCC Document Signer certificate (P-256, digital signature, the DCC extended key usages for
    /// vaccination, test and recovery certificates), valid two years.
    pub fn issue_document_signer(&self, common_name: &str) -> Result<IssuedCert, CertError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(common_name, "Bộ Y tế (Ministry of Health)");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // 1.3.6.1.4.1.1847.2021.1.{1,2,3}: may sign test, vaccination and recovery certificates.
        params.extended_key_usages = (1..=3)
            .map(|kind| ExtendedKeyUsagePurpose::Other(vec![1, 3, 6, 1, 4, 1, 1847, 2021, 1, kind]))
            .collect();
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(730);
        self.issue(params)
    }

    /// A CRL revoking the given serials, valid for 30 days, PEM.
    pub fn crl(&self, revoked: &[Vec<u8>], number: u64) -> Result<String, CertError> {
        self.crl_until(revoked, number, Duration::days(30))
    }

    /// A CRL revoking the given serials whose `nextUpdate` is `next_update` from now (negative: stale), PEM.
    pub fn crl_until(
        &self,
        revoked: &[Vec<u8>],
        number: u64,
        next_update: Duration,
    ) -> Result<String, CertError> {
        let now = OffsetDateTime::now_utc();
        let this_update = (now + next_update).min(now) - Duration::days(1);
        let params = CertificateRevocationListParams {
            this_update,
            next_update: now + next_update,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: now - Duration::minutes(1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }
}

/// Write `contents` to `path`, creating folders; private keys get mode 0600.
pub fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    // Written whole beside it, then renamed: a reader (a broker, a test, a crash) never sees half a file,
    // and a private key is never readable by others, not even for a moment.
    let partial = path.with_extension(format!("partial-{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let _ = private;
    let written = options
        .open(&partial)
        .and_then(|mut file| std::io::Write::write_all(&mut file, contents.as_bytes()))
        .and_then(|()| std::fs::rename(&partial, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written.map_err(io)
}

/// The files of a development PKI folder (`certs/demo/`): CA, server, an empty CRL, and one client
/// certificate per name. Existing files are reused, missing ones are made; returns what was created.
pub fn init_dir(dir: &Path, clients: &[(&str, &str)]) -> Result<Vec<PathBuf>, CertError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| CertError::Io {
            path: p.into(),
            source,
        })
    };
    let (ca_pem, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let mut created = Vec::new();
    let ca = if ca_pem.is_file() && ca_key.is_file() {
        CertAuthority::from_pem(&read(&ca_pem)?, &read(&ca_key)?)?
    } else {
        let ca = CertAuthority::generate("lienthong development CA")?;
        write_file(&ca_pem, ca.cert_pem(), false)?;
        write_file(&ca_key, ca.key_pem(), true)?;
        created.extend([ca_pem.clone(), ca_key.clone()]);
        ca
    };
    let mut ensure =
        |name: &str, make: &dyn Fn() -> Result<IssuedCert, CertError>| -> Result<(), CertError> {
            let (pem, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
            if !(pem.is_file() && key.is_file()) {
                let issued = make()?;
                write_file(&pem, &issued.cert_pem, false)?;
                write_file(&key, &issued.key_pem, true)?;
                created.extend([pem, key]);
            }
            Ok(())
        };
    ensure("server", &|| ca.issue_server(&["localhost", "127.0.0.1", "::1"]))?;
    for (name, org) in clients {
        ensure(name, &|| ca.issue_client(name, org, Validity::days(365)))?;
    }
    let crl = dir.join("crl.pem");
    if !crl.is_file() {
        write_file(&crl, &ca.crl(&[], 1)?, false)?;
        created.push(crl);
    }
    created.extend(init_dcc_signer(dir)?);
    Ok(created)
}

/// The EU DCC certificate pair, beside the TLS PKI: a country signing CA (`dcc-csca.pem`) and the
/// Document Signer certificate it issues (`dcc-dsc.pem`, with its key), which signs vaccination
/// certificates. Existing files are reused; returns what was created.
pub fn init_dcc_signer(dir: &Path) -> Result<Vec<PathBuf>, CertError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| CertError::Io {
            path: p.into(),
            source,
        })
    };
    let (csca_pem, csca_key) = (dir.join("dcc-csca.pem"), dir.join("dcc-csca.key"));
    let (dsc_pem, dsc_key) = (dir.join("dcc-dsc.pem"), dir.join("dcc-dsc.key"));
    let mut created = Vec::new();
    if dsc_pem.is_file() && dsc_key.is_file() {
        return Ok(created);
    }
    let csca = if csca_pem.is_file() && csca_key.is_file() {
        CertAuthority::from_pem(&read(&csca_pem)?, &read(&csca_key)?)?
    } else {
        let csca = CertAuthority::generate("lienthong development CSCA VN")?;
        write_file(&csca_pem, csca.cert_pem(), false)?;
        write_file(&csca_key, csca.key_pem(), true)?;
        created.extend([csca_pem, csca_key]);
        csca
    };
    let dsc = csca.issue_document_signer("lienthong development DSC VN 1")?;
    write_file(&dsc_pem, &dsc.cert_pem, false)?;
    write_file(&dsc_key, &dsc.key_pem, true)?;
    created.extend([dsc_pem, dsc_key]);
    Ok(created)
}
