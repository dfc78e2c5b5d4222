//! The API server's credentials: a CA, a serving certificate signed by it, and a bearer token.
//! Made on first start and kept (mode 0600) in the state directory. The serving certificate
//! names loopback and every name pods use for the API (the `kubernetes` Service's address and
//! DNS names, the advertise address: [`serving_names`]); one that lacks a name is made again
//! with the same CA, so kubeconfigs and pods' `ca.crt` stay valid.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

#[derive(Clone)]
pub struct Credentials {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub token: String,
}

/// Writes a file readable only by its owner, replacing it atomically.
pub fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    Ok(())
}

/// The names the serving certificate carries, as kube-apiserver's: loopback, the `kubernetes`
/// Service's address and DNS names, and the address pods reach the server at.
pub fn serving_names(service_ip: IpAddr, advertise: Option<IpAddr>) -> Vec<String> {
    let mut names: Vec<String> = [
        "127.0.0.1",
        "localhost",
        "::1",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    names.push(service_ip.to_string());
    names.extend(advertise.map(|a| a.to_string()));
    names
}

/// Loads the credentials from `dir`, making them first if they are not there, and the serving
/// certificate again if it was made for other `names`.
pub fn load_or_create(dir: &Path, names: &[String]) -> Result<Credentials> {
    let (ca, crt, keyf, tok) =
        (dir.join("ca.crt"), dir.join("apiserver.crt"), dir.join("apiserver.key"), dir.join("token"));
    let names_file = dir.join("apiserver.names");
    if ca.exists() && crt.exists() && keyf.exists() && tok.exists() {
        let mut creds = Credentials {
            ca_pem: fs::read_to_string(&ca)?,
            cert_pem: fs::read_to_string(&crt)?,
            key_pem: fs::read_to_string(&keyf)?,
            token: fs::read_to_string(&tok)?.trim().to_string(),
        };
        let had = fs::read_to_string(&names_file).unwrap_or_default();
        if had != names.join("\n") {
            // Signed again by the same CA: what trusts the CA trusts the new certificate.
            let ca_key_pem =
                fs::read_to_string(dir.join("ca.key")).context("reading ca.key to renew the serving certificate")?;
            let ca_key = KeyPair::from_pem(&ca_key_pem)?;
            let issuer = Issuer::new(ca_params()?, &ca_key);
            let (cert_pem, key_pem) = serving_cert(names, &issuer)?;
            write_private(&crt, cert_pem.as_bytes())?;
            write_private(&keyf, key_pem.as_bytes())?;
            write_private(&names_file, names.join("\n").as_bytes())?;
            creds.cert_pem = cert_pem;
            creds.key_pem = key_pem;
        }
        return Ok(creds);
    }
    let ca_params = ca_params()?;
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, &ca_key);
    let (cert_pem, key_pem) = serving_cert(names, &issuer)?;
    let token = {
        let bytes: [u8; 32] = rand::random();
        hex::encode(bytes)
    };
    let creds = Credentials { ca_pem: ca_cert.pem(), cert_pem, key_pem, token };
    write_private(&dir.join("ca.key"), ca_key.serialize_pem().as_bytes())?;
    write_private(&ca, creds.ca_pem.as_bytes())?;
    write_private(&crt, creds.cert_pem.as_bytes())?;
    write_private(&keyf, creds.key_pem.as_bytes())?;
    write_private(&tok, creds.token.as_bytes())?;
    write_private(&names_file, names.join("\n").as_bytes())?;
    Ok(creds)
}

/// The CA's parameters: the same each time, so an issuer made again from them and the CA's key
/// signs as the CA did (same issuer name, same authority key identifier).
fn ca_params() -> Result<CertificateParams> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "weft-ca");
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(ca_params)
}

/// A serving certificate for `names` (PEM) and its key.
fn serving_cert<S: rcgen::SigningKey>(names: &[String], issuer: &Issuer<'_, S>) -> Result<(String, String)> {
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(DnType::CommonName, "weft-apiserver");
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// What a certificate from [`signed_by_ca`] is for.
pub enum Use<'a> {
    /// A client: its user (CN) and group (O; at most one), as kube-apiserver reads them.
    Client { user: &'a str, groups: &'a [&'a str] },
    /// A server: the names and addresses it answers for.
    Server { names: &'a [String] },
}

/// A certificate signed by the CA kept in `dir` (`ca.key`), written as `<stem>.crt` and
/// `<stem>.key` the first time and read back after: (certificate, key), PEM.
pub fn signed_by_ca(dir: &Path, stem: &str, what: Use<'_>) -> Result<(String, String)> {
    let (crt, key) = (dir.join(format!("{stem}.crt")), dir.join(format!("{stem}.key")));
    if let (Ok(c), Ok(k)) = (fs::read_to_string(&crt), fs::read_to_string(&key)) {
        return Ok((c, k));
    }
    let ca_key = KeyPair::from_pem(&fs::read_to_string(dir.join("ca.key")).context("reading ca.key")?)?;
    let issuer = Issuer::new(ca_params()?, &ca_key);
    let mut params = match &what {
        Use::Client { user, groups } => {
            // rcgen keeps one value per attribute type: a second Organization would replace the first.
            anyhow::ensure!(groups.len() <= 1, "a client certificate here names at most one group, not {groups:?}");
            let mut p = CertificateParams::new(Vec::<String>::new())?;
            p.distinguished_name.push(DnType::CommonName, *user);
            for g in *groups {
                p.distinguished_name.push(DnType::OrganizationName, *g);
            }
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            p
        }
        Use::Server { names } => {
            let mut p = CertificateParams::new(names.to_vec())?;
            p.distinguished_name.push(DnType::CommonName, names.first().map(String::as_str).unwrap_or(stem));
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
            p
        }
    };
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    let pair = KeyPair::generate()?;
    let cert = params.signed_by(&pair, &issuer)?;
    let (c, k) = (cert.pem(), pair.serialize_pem());
    write_private(&key, k.as_bytes())?;
    write_private(&crt, c.as_bytes())?;
    Ok((c, k))
}

/// A rustls server config offering HTTP/2 and HTTP/1.1.
pub fn server_config(c: &Credentials) -> Result<Arc<rustls::ServerConfig>> {
    let certs = rustls_pemfile::certs(&mut c.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut c.key_pem.as_bytes())?.context("no private key in apiserver.key")?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A kubeconfig for this server (YAML).
pub fn kubeconfig(cluster: &str, server: &str, c: &Credentials) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(&c.ca_pem);
    let n = format!("weft-{cluster}");
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {n}\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\ncontexts:\n- name: {n}\n  context:\n    cluster: {n}\n    user: {n}\n    namespace: default\ncurrent-context: {n}\nusers:\n- name: {n}\n  user:\n    token: {}\npreferences: {{}}\n",
        c.token
    )
}
