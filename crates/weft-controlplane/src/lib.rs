//! A real Kubernetes control plane for a lab: etcd, kube-apiserver, kube-controller-manager and
//! kube-scheduler, the binaries `scripts/peers` builds from their Go modules, started as child
//! processes with everything they need made in one directory (a CA and serving certificate
//! shared with the embedded API's code, static bearer tokens for the admin and for each
//! component, a service-account signing key, kubeconfigs), bound to loopback on free ports.
//! The API advertises `advertise` (a lab address pods reach) as the `kubernetes` Service's
//! endpoint. Stopped (SIGTERM, then SIGKILL) when dropped, so a failing test leaves nothing.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use weft_apiserver::tls::{self, Credentials};

/// What the control plane serves.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Where its certificates, tokens, etcd's data and the components' logs go.
    pub dir: PathBuf,
    /// Where the peers' binaries are (`scripts/peers` builds them into target/peers/bin).
    pub bin_dir: PathBuf,
    /// The lab's name (in the kubeconfig's names).
    pub name: String,
    /// `--service-cluster-ip-range`.
    pub service_cidr: String,
    /// `--service-node-port-range`, as `30000-32767`.
    pub node_port_range: String,
    /// The address written into the `kubernetes` Service's endpoints; None: no endpoints.
    pub advertise: Option<IpAddr>,
    /// kube-controller-manager's `--controllers` (None: its defaults).
    pub controllers: Option<String>,
    /// The pods' range: kube-controller-manager then gives each Node a /24 of it (its node IPAM
    /// controller, `--allocate-node-cidrs`).
    pub cluster_cidr: Option<String>,
    /// Run the components inside this network namespace, as kubeadm runs them on a
    /// control-plane node: kube-apiserver listens on port 6443 of every address there (pods
    /// reach it at `advertise`, and it reaches kubelets at their nodes' addresses), and is
    /// served here at loopback port `api_port` by passing connections in. None: here, on
    /// loopback only.
    pub netns: Option<PathBuf>,
    /// The loopback port the API is served at here (0: a free one).
    pub api_port: u16,
}

/// The binaries a control plane needs, in the order they start.
pub const BINARIES: [&str; 4] = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"];

/// Where the peers' binaries are: `$WEFT_PEERS_BIN`, else the first `peers/bin` holding
/// kube-apiserver in a folder above `exe` (target/release/weft and target/debug/deps/<test>
/// both find target/peers/bin).
pub fn find_bin_dir(exe: &Path) -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("WEFT_PEERS_BIN") {
        return Ok(PathBuf::from(d));
    }
    exe.ancestors().map(|a| a.join("peers/bin")).find(|d| d.join("kube-apiserver").is_file()).with_context(|| {
        format!(
            "no kube-apiserver in a peers/bin folder above {}: build the control plane with `scripts/peers \
                 kubernetes etcd` (or set WEFT_PEERS_BIN to the folder holding {})",
            exe.display(),
            BINARIES.join(", ")
        )
    })
}

/// A running control plane.
pub struct ControlPlane {
    /// kube-apiserver's address (loopback).
    pub api: SocketAddr,
    /// The admin's kubeconfig (token of a `system:masters` user).
    pub kubeconfig: PathBuf,
    /// The admin's credentials (CA, token).
    pub creds: Credentials,
    /// etcd's client address (loopback; inside `netns` if the Spec gives one).
    pub etcd: SocketAddr,
    /// An admin client (made once; it connects when first used).
    client: kube::Client,
    dir: PathBuf,
    children: Vec<(&'static str, Child)>,
    /// Passes connections at `api` into the namespace (with a Spec's `netns`).
    forward: Option<tokio::task::JoinHandle<()>>,
}

/// kube-apiserver's port inside a Spec's `netns` (kubeadm's).
pub const API_PORT_IN_NETNS: u16 = 6443;

/// A loopback port nothing listens on now (the kernel's pick; it can be taken before use, which
/// the component then reports as an address in use).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

/// A token in the static token file: 32 random bytes, hex.
fn token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

impl ControlPlane {
    /// Makes what is missing in `spec.dir`, starts the four components and waits (at most
    /// `limit`) until kube-apiserver is ready and the default namespaces exist.
    pub async fn start(spec: &Spec, limit: Duration) -> Result<ControlPlane> {
        for b in BINARIES {
            let p = spec.bin_dir.join(b);
            anyhow::ensure!(p.is_file(), "{} is missing: build it with `scripts/peers kubernetes etcd`", p.display());
        }
        let dir = &spec.dir;
        std::fs::create_dir_all(dir.join("logs")).with_context(|| format!("making {}", dir.display()))?;
        // The `kubernetes` Service's ClusterIP, numbered as the embedded API and kube-apiserver do.
        let service_net: ipnet::IpNet =
            spec.service_cidr.parse().with_context(|| format!("service CIDR {:?} is not a CIDR", spec.service_cidr))?;
        let service_ip = weft_apiserver::alloc::IpAllocator::new(service_net)
            .nth(1)
            .with_context(|| format!("service CIDR {} has no room for the kubernetes Service", spec.service_cidr))?;
        let mut names = tls::serving_names(service_ip, spec.advertise);
        names.sort();
        names.dedup();
        let creds = tls::load_or_create(dir, &names)?;
        // Static tokens: the admin (system:masters) and each component as the user kubeadm
        // gives it, which the API's bootstrap RBAC policy grants what it needs.
        let component_tokens = read_or_make(dir, "components.tokens", || format!("{}\n{}\n", token(), token()))?;
        let mut lines = component_tokens.lines();
        let (kcm_token, sched_token) = (
            lines.next().context("components.tokens is damaged: delete it")?.to_string(),
            lines.next().context("components.tokens is damaged: delete it")?.to_string(),
        );
        tls::write_private(
            &dir.join("tokens.csv"),
            format!(
                "{},admin,admin,system:masters\n{kcm_token},system:kube-controller-manager,kcm\n{sched_token},system:kube-scheduler,scheduler\n",
                creds.token
            )
            .as_bytes(),
        )?;
        // The service-account signing key (ES256, the embedded API's own), kept across restarts so
        // tokens stay valid; kube-apiserver takes its public half from a file.
        let sa = weft_apiserver::tokens::Keys::load_or_create(dir)?;
        tls::write_private(&dir.join("sa.pub"), sa.public_pem.as_bytes())?;
        // kube-apiserver's client certificate toward kubelets (exec, logs, port-forward), which
        // they take from no one else.
        tls::signed_by_ca(
            dir,
            "apiserver-kubelet-client",
            tls::Use::Client { user: "kube-apiserver-kubelet-client", groups: &["system:masters"] },
        )?;
        let cluster_cidr: Option<ipnet::IpNet> = spec
            .cluster_cidr
            .as_deref()
            .map(|c| c.parse().with_context(|| format!("cluster CIDR {c:?} is not a CIDR")))
            .transpose()?;
        // In a namespace of its own, every port is free: kubeadm's.
        let inside = spec.netns.is_some();
        let pick = |fixed: u16| -> Result<u16> { if inside { Ok(fixed) } else { free_port() } };
        let (etcd_port, peer_port) = (pick(2379)?, pick(2380)?);
        let api_port = if spec.api_port != 0 { spec.api_port } else { free_port()? };
        let inner_api_port = if inside { API_PORT_IN_NETNS } else { api_port };
        let api = SocketAddr::from((Ipv4Addr::LOCALHOST, api_port));
        let etcd = SocketAddr::from((Ipv4Addr::LOCALHOST, etcd_port));
        let kubeconfig = dir.join("admin.kubeconfig");
        tls::write_private(&kubeconfig, tls::kubeconfig(&spec.name, &format!("https://{api}"), &creds).as_bytes())?;
        let inner_server = format!("https://127.0.0.1:{inner_api_port}");
        for (file, tok) in [("controller-manager.kubeconfig", &kcm_token), ("scheduler.kubeconfig", &sched_token)] {
            let c = Credentials { token: tok.clone(), ..creds.clone() };
            tls::write_private(&dir.join(file), tls::kubeconfig(&spec.name, &inner_server, &c).as_bytes())?;
        }
        let forward = match &spec.netns {
            Some(ns) => Some(forward_into(api, ns.clone(), inner_api_port)?),
            None => None,
        };
        let client = admin_client(&kubeconfig).await?;
        let mut cp = ControlPlane { api, kubeconfig, creds, etcd, client, dir: dir.clone(), children: vec![], forward };
        let p = |f: &str| dir.join(f).display().to_string();
        // etcd takes clients and peers by certificates of a CA of its own only, as kubeadm sets it
        // up: what listens on node-1's loopback is reachable from its hostNetwork pods, and no
        // certificate made for the cluster (a kubelet's, a user's) may open it. `load_or_create`
        // makes that CA and a serving pair it names `apiserver.crt`/`.key`: here, etcd's.
        let etcd_dir = dir.join("etcd-pki");
        std::fs::create_dir_all(&etcd_dir).with_context(|| format!("making {}", etcd_dir.display()))?;
        tls::load_or_create(&etcd_dir, &["127.0.0.1".to_string(), "localhost".to_string()])?;
        tls::signed_by_ca(
            &etcd_dir,
            "apiserver-etcd-client",
            tls::Use::Client { user: "kube-apiserver-etcd-client", groups: &[] },
        )?;
        let e = |f: &str| etcd_dir.join(f).display().to_string();
        let etcd_url = format!("https://{etcd}");
        let peer_url = format!("https://127.0.0.1:{peer_port}");
        cp.spawn(
            spec,
            "etcd",
            &[
                "--name=weft",
                &format!("--data-dir={}", p("etcd")),
                &format!("--listen-client-urls={etcd_url}"),
                &format!("--advertise-client-urls={etcd_url}"),
                &format!("--listen-peer-urls={peer_url}"),
                &format!("--initial-advertise-peer-urls={peer_url}"),
                &format!("--initial-cluster=weft={peer_url}"),
                &format!("--cert-file={}", e("apiserver.crt")),
                &format!("--key-file={}", e("apiserver.key")),
                "--client-cert-auth",
                &format!("--trusted-ca-file={}", e("ca.crt")),
                &format!("--peer-cert-file={}", e("apiserver.crt")),
                &format!("--peer-key-file={}", e("apiserver.key")),
                "--peer-client-cert-auth",
                &format!("--peer-trusted-ca-file={}", e("ca.crt")),
                "--log-level=warn",
            ],
        )?;
        let advertise = spec.advertise.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        cp.spawn(
            spec,
            "kube-apiserver",
            &[
                &format!("--etcd-servers={etcd_url}"),
                &format!("--etcd-cafile={}", e("ca.crt")),
                &format!("--etcd-certfile={}", e("apiserver-etcd-client.crt")),
                &format!("--etcd-keyfile={}", e("apiserver-etcd-client.key")),
                &format!("--bind-address={}", if inside { "0.0.0.0" } else { "127.0.0.1" }),
                &format!("--secure-port={inner_api_port}"),
                &format!("--advertise-address={advertise}"),
                // No lab address: no endpoint for the `kubernetes` Service (kube-apiserver
                // refuses to advertise loopback), as the embedded API does without one.
                &format!("--endpoint-reconciler-type={}", if spec.advertise.is_some() { "lease" } else { "none" }),
                &format!("--tls-cert-file={}", p("apiserver.crt")),
                &format!("--tls-private-key-file={}", p("apiserver.key")),
                &format!("--client-ca-file={}", p("ca.crt")),
                &format!("--token-auth-file={}", p("tokens.csv")),
                "--authorization-mode=RBAC",
                &format!("--service-cluster-ip-range={}", spec.service_cidr),
                &format!("--service-node-port-range={}", spec.node_port_range),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                &format!("--service-account-key-file={}", p("sa.pub")),
                &format!("--service-account-signing-key-file={}", p("sa.key")),
                &format!("--kubelet-client-certificate={}", p("apiserver-kubelet-client.crt")),
                &format!("--kubelet-client-key={}", p("apiserver-kubelet-client.key")),
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=0",
            ],
        )?;
        // The controller manager and scheduler exit if the API's bootstrap RBAC policy is not
        // there yet (kubeadm's kubelet restarts them; we start them once it is).
        cp.wait_ready(limit).await?;
        // What both take: their kubeconfig (also to authenticate and authorize callers of their
        // own endpoints), a free loopback port for those, no profiling, quiet logs.
        let common = |kubeconfig: &str, port: u16| -> Result<Vec<String>> {
            let k = p(kubeconfig);
            Ok(vec![
                format!("--kubeconfig={k}"),
                format!("--authentication-kubeconfig={k}"),
                format!("--authorization-kubeconfig={k}"),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", pick(port)?),
                "--profiling=false".into(),
                "--v=0".into(),
            ])
        };
        let mut kcm = common("controller-manager.kubeconfig", 10257)?;
        kcm.extend([
            format!("--service-account-private-key-file={}", p("sa.key")),
            format!("--root-ca-file={}", p("ca.crt")),
            "--use-service-account-credentials=true".into(),
            format!("--service-cluster-ip-range={}", spec.service_cidr),
            format!("--controllers={}", spec.controllers.as_deref().unwrap_or("*")),
        ]);
        if let Some(c) = cluster_cidr {
            kcm.extend([
                "--allocate-node-cidrs=true".into(),
                format!("--cluster-cidr={c}"),
                format!("--node-cidr-mask-size={}", 24.max(c.prefix_len())),
            ]);
        }
        cp.spawn(spec, "kube-controller-manager", &kcm)?;
        cp.spawn(spec, "kube-scheduler", &common("scheduler.kubeconfig", 10259)?)?;
        // Both up: each has taken its leader lease (they work only once they hold it).
        cp.wait_leaders(limit).await?;
        Ok(cp)
    }

    fn spawn<S: AsRef<std::ffi::OsStr>>(&mut self, spec: &Spec, name: &'static str, args: &[S]) -> Result<()> {
        let log = std::fs::File::create(self.dir.join("logs").join(format!("{name}.log")))?;
        let mut cmd = Command::new(spec.bin_dir.join(name));
        if let Some(ns) = &spec.netns {
            weft_netlink::ns::command_in(&mut cmd, ns)
                .with_context(|| format!("starting {name} in network namespace {}", ns.display()))?;
        }
        let child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Not in our process group's way: the children are stopped by id, here.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        tracing::info!(name, pid = child.id(), "control plane component started");
        self.children.push((name, child));
        Ok(())
    }

    /// Its directory: certificates (the CA's key among them), kubeconfigs, etcd's data, logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Waits (at most `limit`) until namespace `ns` has its `default` ServiceAccount, which
    /// kube-controller-manager makes.
    pub async fn wait_service_account(&self, ns: &str, limit: Duration) -> Result<()> {
        let sas: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> = kube::Api::namespaced(self.client.clone(), ns);
        let start = Instant::now();
        while sas.get_opt("default").await.ok().flatten().is_none() {
            anyhow::ensure!(
                start.elapsed() < limit,
                "namespace {ns} got no default ServiceAccount within {limit:?}; kube-controller-manager's log ends:\n{}",
                self.log_tail("kube-controller-manager", 20)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// The process id of a component (`etcd`, `kube-apiserver`, ...) while it runs.
    pub fn pid(&self, name: &str) -> Option<i32> {
        self.children.iter().find(|(n, _)| *n == name).map(|(_, c)| c.id() as i32)
    }

    /// A client as the admin.
    pub async fn client(&self) -> Result<kube::Client> {
        Ok(self.client.clone())
    }

    /// The last lines of a component's log (for errors).
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("logs").join(format!("{name}.log"))).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Fails naming the component when one has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        for (name, c) in &mut self.children {
            if let Some(status) = c.try_wait()? {
                let name = *name;
                bail!("{name} exited ({status}); its log ends:\n{}", self.log_tail(name, 20));
            }
        }
        Ok(())
    }

    async fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let start = Instant::now();
        let mut last = String::from("no answer yet");
        while start.elapsed() < limit {
            self.check_alive()?;
            match self.ready_once().await {
                Ok(()) => {
                    tracing::info!(api = %self.api, took = ?start.elapsed(), "control plane ready");
                    return Ok(());
                }
                Err(e) => last = format!("{e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!(
            "the control plane was not ready within {limit:?} ({last}); kube-apiserver's log ends:\n{}",
            self.log_tail("kube-apiserver", 20)
        )
    }

    async fn wait_leaders(&mut self, limit: Duration) -> Result<()> {
        let start = Instant::now();
        let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
            kube::Api::namespaced(self.client.clone(), "kube-system");
        for name in ["kube-controller-manager", "kube-scheduler"] {
            loop {
                self.check_alive()?;
                let held = leases
                    .get_opt(name)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|l| l.spec.and_then(|s| s.holder_identity).is_some_and(|h| !h.is_empty()));
                if held {
                    break;
                }
                anyhow::ensure!(
                    start.elapsed() < limit,
                    "{name} took no leader lease within {limit:?}; its log ends:\n{}",
                    self.log_tail(name, 20)
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    /// Ready: /readyz says so (every post-start hook, RBAC's bootstrap policy among them) and
    /// the system namespaces exist.
    async fn ready_once(&self) -> Result<()> {
        let req = http::Request::get("/readyz").body(Vec::new())?;
        let body = tokio::time::timeout(Duration::from_secs(5), self.client.request_text(req)).await??;
        anyhow::ensure!(body.trim() == "ok", "/readyz: {body}");
        let ns: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(self.client.clone());
        for n in ["default", "kube-system", "kube-public"] {
            ns.get(n).await.with_context(|| format!("namespace {n}"))?;
        }
        Ok(())
    }

    /// Stops every component (SIGTERM, then SIGKILL after 10 s), newest first.
    pub fn stop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        if let Some(f) = self.forward.take() {
            f.abort();
        }
        while let Some((name, mut c)) = self.children.pop() {
            let pid = Pid::from_raw(c.id() as i32);
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        tracing::warn!(name, "did not stop on SIGTERM within 10 s: killing it");
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Serves `at` (loopback, here) by connecting to loopback port `port` inside `netns`.
fn forward_into(at: SocketAddr, netns: PathBuf, port: u16) -> Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(at).with_context(|| format!("listening on {at} for the API"))?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let connect = move || -> weft_apiserver::kubernetes_service::Connecting {
        let ns = netns.clone();
        Box::pin(async move {
            let inside = tokio::task::spawn_blocking(move || {
                weft_netlink::ns::run_in(Some(&ns), move || std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)))
            })
            .await
            .map_err(std::io::Error::other)?
            .map_err(std::io::Error::other)??;
            inside.set_nonblocking(true)?;
            tokio::net::TcpStream::from_std(inside)
        })
    };
    Ok(tokio::spawn(weft_apiserver::kubernetes_service::forward_with(listener, connect)))
}

/// The file's content, made by `make` (mode 0600) if it is not there.
fn read_or_make(dir: &Path, file: &str, make: impl FnOnce() -> String) -> Result<String> {
    let p = dir.join(file);
    if let Ok(s) = std::fs::read_to_string(&p) {
        return Ok(s);
    }
    let s = make();
    tls::write_private(&p, s.as_bytes())?;
    Ok(s)
}

/// A client from a kubeconfig file.
async fn admin_client(kubeconfig: &Path) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(kube::Client::try_from(cfg)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Spec whose binaries "exist" (empty files): what is refused is refused before any start.
    fn spec(dir: &Path, service_cidr: &str) -> Spec {
        let bin_dir = dir.join("bin");
        std::fs::create_dir_all(&bin_dir).unwrap();
        for b in BINARIES {
            std::fs::write(bin_dir.join(b), b"").unwrap();
        }
        Spec {
            dir: dir.join("cp"),
            bin_dir,
            name: "t".into(),
            service_cidr: service_cidr.into(),
            node_port_range: "30000-32767".into(),
            advertise: None,
            controllers: None,
            cluster_cidr: None,
            netns: None,
            api_port: 0,
        }
    }

    async fn start_error(spec: &Spec) -> String {
        match ControlPlane::start(spec, Duration::from_secs(1)).await {
            Ok(_) => panic!("started with {spec:?}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[tokio::test]
    async fn bad_input_is_refused_by_name_before_anything_starts() {
        let dir = tempfile::tempdir().unwrap();
        for (cidr, says) in [
            ("10.96.0.0", "service CIDR \"10.96.0.0\" is not a CIDR"),
            ("not/a/cidr", "is not a CIDR"),
            ("10.96.0.0/32", "has no room for the kubernetes Service"),
        ] {
            let e = start_error(&spec(dir.path(), cidr)).await;
            assert!(e.contains(says), "{cidr}: {e}");
        }
        // A damaged token file names itself and the fix.
        let s = spec(dir.path(), "10.96.0.0/16");
        std::fs::create_dir_all(&s.dir).unwrap();
        std::fs::write(s.dir.join("components.tokens"), "only-one-line\n").unwrap();
        assert!(start_error(&s).await.contains("components.tokens is damaged: delete it"));
        // A missing binary names the script that builds it.
        std::fs::remove_file(s.bin_dir.join("kube-scheduler")).unwrap();
        assert!(start_error(&s).await.contains("scripts/peers kubernetes etcd"));
    }
}
