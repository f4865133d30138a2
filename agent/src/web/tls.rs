//! TLS for the web server: a rustls (ring) server config from the web config's certificate,
//! key and client CA, with Go's five client certificate policies.

use std::sync::Arc;

use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme, SupportedProtocolVersion,
    client::danger::HandshakeSignatureValid,
    crypto::{CryptoProvider, ring, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject as _},
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};

/// `client_auth_type`: Go's `tls.ClientAuthType`, as exporter-toolkit names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    NoClientCert,
    /// Ask for a certificate; accept the client without one, and any certificate unverified.
    RequestClientCert,
    /// Require a certificate, unverified.
    RequireAnyClientCert,
    /// Verify a certificate against the client CA when the client sends one.
    VerifyClientCertIfGiven,
    /// Require a certificate the client CA signed.
    RequireAndVerifyClientCert,
}

impl ClientAuth {
    pub const NAMES: &str =
        "NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert";

    pub fn parse(name: &str) -> Option<ClientAuth> {
        Some(match name {
            "NoClientCert" => ClientAuth::NoClientCert,
            "RequestClientCert" => ClientAuth::RequestClientCert,
            // exporter-toolkit keeps "RequireClientCert" as an old name.
            "RequireAnyClientCert" | "RequireClientCert" => ClientAuth::RequireAnyClientCert,
            "VerifyClientCertIfGiven" => ClientAuth::VerifyClientCertIfGiven,
            "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerifyClientCert,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            ClientAuth::NoClientCert => "NoClientCert",
            ClientAuth::RequestClientCert => "RequestClientCert",
            ClientAuth::RequireAnyClientCert => "RequireAnyClientCert",
            ClientAuth::VerifyClientCertIfGiven => "VerifyClientCertIfGiven",
            ClientAuth::RequireAndVerifyClientCert => "RequireAndVerifyClientCert",
        }
    }

    /// Whether certificates are checked against the client CA.
    pub fn verifies(self) -> bool {
        matches!(self, ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    pub fn parse(name: &str) -> Result<TlsVersion, String> {
        match name {
            "TLS12" => Ok(TlsVersion::Tls12),
            "TLS13" => Ok(TlsVersion::Tls13),
            "TLS10" | "TLS11" => Err(format!("{name} is not supported (TLS 1.2 and 1.3 only): use TLS12 or TLS13")),
            _ => Err(format!("unknown value {name:?}, expected TLS12 or TLS13")),
        }
    }
}

/// The PEM inputs and the settings of `tls_server_config`.
#[derive(Debug)]
pub struct TlsMaterial {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub client_ca_pem: Option<Vec<u8>>,
    pub client_auth: ClientAuth,
    pub min: TlsVersion,
    pub max: TlsVersion,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls_server_config.cert_file: not a PEM certificate chain ({0})")]
    Cert(String),
    #[error("tls_server_config.cert_file: no PEM certificate in it")]
    NoCert,
    #[error("tls_server_config.key_file: no PEM private key in it ({0})")]
    Key(String),
    #[error("tls_server_config.key_file: does not match the certificate in cert_file (another public key)")]
    KeyMismatch,
    #[error("tls_server_config.client_ca_file: {0}")]
    ClientCa(String),
    #[error("tls_server_config: the certificate and key cannot be used ({0})")]
    Unusable(String),
    #[error("tls_server_config: {0}")]
    Rustls(String),
}

/// The rustls server config: the certificate chain and key (which must match), TLS versions
/// min..=max, the client certificate policy, HTTP/1.1 by ALPN.
pub fn server_config(m: &TlsMaterial) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(ring::default_provider());
    let certs = CertificateDer::pem_slice_iter(&m.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Cert(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCert);
    }
    let key = PrivateKeyDer::from_pem_slice(&m.key_pem).map_err(|e| TlsError::Key(e.to_string()))?;

    let versions: Vec<&'static SupportedProtocolVersion> = [(TlsVersion::Tls12, &rustls::version::TLS12), (TlsVersion::Tls13, &rustls::version::TLS13)]
        .into_iter()
        .filter(|(v, _)| (m.min..=m.max).contains(v))
        .map(|(_, p)| p)
        .collect();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;

    let builder = match m.client_auth {
        ClientAuth::NoClientCert => builder.with_no_client_auth(),
        ClientAuth::RequestClientCert | ClientAuth::RequireAnyClientCert => builder.with_client_cert_verifier(Arc::new(AnyClientCert {
            provider: provider.clone(),
            mandatory: m.client_auth == ClientAuth::RequireAnyClientCert,
        })),
        ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert => {
            let pem = m.client_ca_pem.as_deref().ok_or_else(|| TlsError::ClientCa("missing".into()))?;
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| TlsError::ClientCa(format!("not a PEM certificate list ({e})")))?;
                roots.add(cert).map_err(|e| TlsError::ClientCa(format!("not a usable CA certificate ({e})")))?;
            }
            if roots.is_empty() {
                return Err(TlsError::ClientCa("no PEM certificate in it".into()));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let verifier = if m.client_auth == ClientAuth::VerifyClientCertIfGiven {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| TlsError::ClientCa(e.to_string()))?)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch,
        other => TlsError::Unusable(other.to_string()),
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// RequestClientCert and RequireAnyClientCert: any certificate is taken as it is; the client
/// still proves it holds the certificate's key (the handshake signature is verified).
#[derive(Debug)]
struct AnyClientCert {
    provider: Arc<CryptoProvider>,
    mandatory: bool,
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
