//! The throw-away PKI: a CA generated at start-up and a server certificate it signs for
//! `127.0.0.1` and `localhost`. Nothing here is ever written to disk except the CA
//! certificate (public), when a caller asks for it.

use std::sync::Arc;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA certificate (PEM) and a TLS server configuration whose certificate it signed.
pub(crate) struct Pki {
    pub(crate) ca_pem: String,
    pub(crate) server_config: Arc<rustls::ServerConfig>,
}

/// Generates a fresh CA and server certificate and builds a rustls server configuration
/// (ring provider, ALPN h2 and http/1.1).
pub(crate) fn generate() -> anyhow::Result<Pki> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).context("CA params")?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "fake-therappai test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().context("generate CA key")?;
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).context("self-sign CA")?;

    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .context("server cert params")?;
    params
        .distinguished_name
        .push(DnType::CommonName, "fake-therappai");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate().context("generate server key")?;
    let server_cert = params
        .signed_by(&server_key, &ca)
        .context("sign server certificate")?;

    let chain = vec![
        CertificateDer::from(server_cert.der().to_vec()),
        CertificateDer::from(ca.der().to_vec()),
    ];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));

    // The provider is chosen explicitly: another crate in the build may enable aws-lc-rs
    // too, and then rustls cannot pick a process default on its own.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("TLS server certificate")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

    Ok(Pki {
        ca_pem: ca.pem(),
        server_config: Arc::new(config),
    })
}
