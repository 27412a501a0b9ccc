//! A private certificate authority made at test time (rcgen), for the
//! tests that run real TLS servers: HTTPS checks and webhooks, etcd over TLS.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A private CA and what it signed, written as PEM files in a temporary
/// directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: Certificate,
    ca_key: KeyPair,
}

/// A certificate and its key, in DER for a test server and as PEM files for
/// minder.
pub struct Issued {
    pub der: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl Pki {
    pub fn new() -> Pki {
        Pki::named("minder test CA")
    }

    pub fn named(name: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let ca = params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca, ca_key }
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A certificate for `names` (DNS names or IP addresses), for a server or a client.
    pub fn issue(&self, file: &str, names: &[&str], client: bool, expired: bool) -> Issued {
        let usage = if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        };
        self.issue_for(file, names, vec![usage], expired)
    }

    /// A certificate a server also uses as a client (etcd's gateway
    /// connects to its own gRPC port with it).
    pub fn issue_server_and_client(&self, file: &str, names: &[&str]) -> Issued {
        let usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue_for(file, names, usages, false)
    }

    fn issue_for(
        &self,
        file: &str,
        names: &[&str],
        usages: Vec<ExtendedKeyUsagePurpose>,
        expired: bool,
    ) -> Issued {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, file);
        params.extended_key_usages = usages;
        if expired {
            params.not_before = rcgen::date_time_ymd(2001, 1, 1);
            params.not_after = rcgen::date_time_ymd(2002, 1, 1);
        }
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let cert_file = self.dir.path().join(format!("{file}.pem"));
        let key_file = self.dir.path().join(format!("{file}.key"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        Issued {
            der: cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            cert_file,
            key_file,
        }
    }
}
