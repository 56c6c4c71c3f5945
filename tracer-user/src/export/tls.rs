//! TLS to an OTLP endpoint: the CA to trust and the client certificate to show, from the
//! specification's variables (`OTEL_EXPORTER_OTLP_CERTIFICATE`, `..._CLIENT_CERTIFICATE`,
//! `..._CLIENT_KEY`, or their `_TRACES_`/`_METRICS_` forms). The files are read and parsed at
//! start-up: a wrong path or a file that is not PEM stops the tracer naming the variable, rather
//! than failing every export later.
use super::ExportError;

/// PEM contents, read once. Empty: the host's trusted roots, no client certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// Trust only the CAs of this bundle (a private CA is the reason to set it).
    pub ca: Option<Vec<u8>>,
    /// Certificate chain and private key shown to endpoints that ask for one (mTLS).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsFiles {
    /// `pick(suffix)` gives the variable that is set, and its value: the signal's own
    /// (`OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE`) before the shared one.
    pub fn from_env(
        pick: impl Fn(&str) -> Option<(String, String)>,
    ) -> Result<TlsFiles, ExportError> {
        let read = |suffix: &str| -> Result<Option<(String, Vec<u8>)>, ExportError> {
            let Some((var, path)) = pick(suffix).filter(|(_, p)| !p.trim().is_empty()) else {
                return Ok(None);
            };
            match std::fs::read(path.trim()) {
                Ok(pem) => Ok(Some((var, pem))),
                Err(e) => Err(ExportError::Tls {
                    var,
                    detail: format!("cannot read {path}: {e}"),
                }),
            }
        };
        let ca = read("CERTIFICATE")?;
        if let Some((var, pem)) = &ca {
            let n = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| tls_error(var, e))?
                .len();
            if n == 0 {
                return Err(ExportError::Tls {
                    var: var.clone(),
                    detail: "no PEM certificate in the file".into(),
                });
            }
        }
        let identity = match (read("CLIENT_CERTIFICATE")?, read("CLIENT_KEY")?) {
            (None, None) => None,
            (Some((var, _)), None) | (None, Some((var, _))) => {
                return Err(ExportError::Tls {
                    var,
                    detail: "a client certificate needs its key and the other way round: set \
                             both ..._CLIENT_CERTIFICATE and ..._CLIENT_KEY"
                        .into(),
                });
            }
            (Some((var, cert)), Some((_, key))) => {
                identity(&cert, &key).map_err(|e| tls_error(&var, e))?;
                Some((cert, key))
            }
        };
        Ok(TlsFiles {
            ca: ca.map(|(_, pem)| pem),
            identity,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.identity.is_none()
    }

    /// The HTTP/protobuf client's TLS settings.
    pub fn http(&self, b: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        let mut b = b.tls_built_in_root_certs(self.ca.is_none());
        if let Some(ca) = &self.ca {
            // Checked in from_env.
            for c in reqwest::Certificate::from_pem_bundle(ca).unwrap_or_default() {
                b = b.add_root_certificate(c);
            }
        }
        if let Some(Ok(id)) = self.identity.as_ref().map(|(c, k)| identity(c, k)) {
            b = b.identity(id);
        }
        b
    }

    /// The gRPC channel's TLS settings.
    pub fn grpc(&self) -> tonic::transport::ClientTlsConfig {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let mut c = ClientTlsConfig::new();
        c = match &self.ca {
            Some(ca) => c.ca_certificate(Certificate::from_pem(ca)),
            None => c.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            c = c.identity(Identity::from_pem(cert, key));
        }
        c
    }
}

/// reqwest's rustls identity: the chain and the key in one PEM.
fn identity(cert: &[u8], key: &[u8]) -> reqwest::Result<reqwest::Identity> {
    reqwest::Identity::from_pem(&[cert, b"\n", key].concat())
}

fn tls_error(var: &str, e: impl std::fmt::Display) -> ExportError {
    ExportError::Tls {
        var: var.into(),
        detail: e.to_string(),
    }
}
