//! ingress-bench: weft's ingress controller (`weft-ingress --from-file`) against nginx, HAProxy
//! and Traefik as the same reverse proxy, in one run (the shape of
//! `../shared/anchors/ingress-anchor.sh`).
//!
//! The same upstream for all: an nginx (worker_processes 1) returning a 100-byte body on four
//! loopback ports, one per route, each answering with an `X-Route` header naming its route (so
//! the routing check sees where a request went without any proxy adding a header). The same
//! routing for all: `a.example` and `b.example`, `/api/` and `/` (four routes), `ws.example` (a
//! WebSocket echo server inside this program), an unknown host gets 404; plain HTTP and TLS
//! (one self-signed RSA-2048 certificate made by `openssl req`, for weft a `kubernetes.io/tls`
//! Secret). One worker, thread or core each: nginx `worker_processes 1`, HAProxy `nbthread 1`,
//! Traefik `GOMAXPROCS=1`, weft `--threads 1`; access logs off.
//!
//! 1. Throughput: a routing check, then `wrk -t1 -c50 -d{duration}s --latency` with a Lua
//!    script cycling the four routes, `--rounds` rounds per proxy, plain and TLS: median req/s
//!    and p99, the proxy's CPU time per request (its process group's, from /proc; the three
//!    processes share the machine's cores, so this is the figure that does not depend on how
//!    they were scheduled), and weft's ratios to the others.
//! 2. Route changes: per proxy, under the same wrk load plus `--ws` WebSockets held open through
//!    the proxy (a message each 100 ms, echoed), the routes change 10 times a second (the host
//!    `c.example` comes and goes, `b.example/api/` flips between two upstreams): weft and
//!    Traefik by rewriting their file (write and rename), nginx by `SIGHUP` (`nginx -s
//!    reload`), HAProxy by `SIGUSR2` to its master (`-W`, seamless). Counts failed requests
//!    (non-2xx and socket errors, from wrk), WebSockets closed and echoes missed.
//!
//! Needs nginx, haproxy, wrk, curl and openssl (Debian packages of those names; this program
//! installs nothing), `weft-ingress` (`cargo build --release -p weft-ingress`) and, for Traefik,
//! `scripts/peers traefik` (skipped with a note when not built). Loopback only (ports
//! 28080-28196, refused when busy); every process it starts is stopped by its pid (its process
//! group) on every way out, Ctrl-C included.
//!
//! Usage: ingress-bench [--duration S] [--rounds N] [--only weft,nginx,haproxy,traefik]
//!        [--weft-bin PATH] [--traefik-bin PATH] [--ws K] [--changes-per-sec R] [--no-changes]

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{SinkExt, StreamExt};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const LO: &str = "127.0.0.1";
/// The upstream's ports, one per route: a-api, a-web, b-api, b-web.
const UPSTREAM: [u16; 4] = [28101, 28102, 28103, 28104];
const ROUTES: [&str; 4] = ["a-api", "a-web", "b-api", "b-web"];
/// The WebSocket echo server.
const WS_PORT: u16 = 28105;
const WRK_CONNS: u32 = 50;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Nginx,
    Haproxy,
    Traefik,
    Weft,
}

const ALL: [Kind; 4] = [Kind::Nginx, Kind::Haproxy, Kind::Traefik, Kind::Weft];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
            Kind::Traefik => "traefik",
            Kind::Weft => "weft",
        }
    }
    /// Plain, TLS, metrics/admin.
    fn ports(self) -> (u16, u16, u16) {
        match self {
            Kind::Nginx => (28080, 28180, 28190),
            Kind::Haproxy => (28082, 28182, 28192),
            Kind::Traefik => (28084, 28184, 28194),
            Kind::Weft => (28086, 28186, 28196),
        }
    }
    fn url(self, tls: bool) -> String {
        let (h, s, _) = self.ports();
        if tls { format!("https://{LO}:{s}") } else { format!("http://{LO}:{h}") }
    }
}

struct Args {
    duration: u64,
    rounds: usize,
    only: Vec<Kind>,
    weft_bin: PathBuf,
    traefik_bin: PathBuf,
    ws: usize,
    rate: u64,
    changes: bool,
}

fn parse_args() -> Result<Args> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("no directory of the program")?.to_path_buf();
    let mut a = Args {
        duration: 10,
        rounds: 3,
        only: ALL.to_vec(),
        weft_bin: dir.join("weft-ingress"),
        // target/release/ingress-bench -> target/peers/bin/traefik
        traefik_bin: dir.parent().map(|t| t.join("peers/bin/traefik")).unwrap_or_default(),
        ws: 20,
        rate: 10,
        changes: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next()).with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--duration" => a.duration = value()?.parse::<u64>().context("--duration")?.clamp(1, 300),
            "--rounds" => a.rounds = value()?.parse::<usize>().context("--rounds")?.clamp(1, 20),
            "--ws" => a.ws = value()?.parse::<usize>().context("--ws")?.min(1000),
            "--changes-per-sec" => a.rate = value()?.parse::<u64>().context("--changes-per-sec")?.clamp(1, 100),
            "--weft-bin" => a.weft_bin = value()?.into(),
            "--traefik-bin" => a.traefik_bin = value()?.into(),
            "--no-changes" => a.changes = false,
            "--only" => {
                let v = value()?;
                a.only = v
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| ALL.into_iter().find(|k| k.name() == s).with_context(|| format!("--only: unknown {s:?}")))
                    .collect::<Result<_>>()?;
            }
            "-h" | "--help" => {
                println!(
                    "ingress-bench [--duration S] [--rounds N] [--only weft,nginx,haproxy,traefik] [--weft-bin PATH] \
                     [--traefik-bin PATH] [--ws K] [--changes-per-sec R] [--no-changes]"
                );
                std::process::exit(0);
            }
            _ => bail!("unknown argument {arg:?} (--help)"),
        }
    }
    Ok(a)
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A process this program started, in its own process group; stopped (SIGTERM to the group,
/// then SIGKILL after 3 s) when dropped, so on every way out.
struct Proc {
    name: String,
    child: tokio::process::Child,
    pid: i32,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, mut cmd: tokio::process::Command, work: &Path) -> Result<Proc> {
        let log = work.join(format!("{name}.log"));
        let f = std::fs::File::create(&log)?;
        cmd.stdin(Stdio::null()).stdout(f.try_clone()?).stderr(f).process_group(0).kill_on_drop(true);
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let pid = child.id().context("no pid")? as i32;
        Ok(Proc { name: name.into(), child, pid, log })
    }

    fn signal(&self, sig: Signal) -> Result<()> {
        kill(Pid::from_raw(self.pid), sig).with_context(|| format!("{sig} to {} ({})", self.name, self.pid))
    }

    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

/// CPU time (user + system, in clock ticks) of every process in `group`: nginx's and
/// HAProxy's masters and workers, Traefik's and weft's threads.
fn group_cpu_ticks(group: i32) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    let mut ticks = 0;
    for e in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        // After the command's ")": state ppid pgrp session tty tpgid flags minflt cminflt
        // majflt cmajflt utime stime (fields 3.. of proc_pid_stat(5)).
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 12 && f[2].parse() == Ok(group) {
            ticks += f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
        }
    }
    ticks
}

impl Drop for Proc {
    fn drop(&mut self) {
        let group = Pid::from_raw(self.pid);
        let _ = killpg(group, Signal::SIGTERM);
        for _ in 0..150 {
            if self.exited() && killpg(group, None).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = killpg(group, Signal::SIGKILL);
        let _ = self.child.start_kill();
        for _ in 0..50 {
            if self.exited() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Aborts a task when dropped.
struct Abort(tokio::task::AbortHandle);
impl Drop for Abort {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn have(tool: &str) -> bool {
    std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file())).unwrap_or(false)
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind((LO, port)).is_ok()
}

/// Writes a file by writing a sibling and renaming it over, so a reader never sees half of it.
fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

async fn run_tool(cmd: &str, args: &[&str], limit: Duration) -> Result<std::process::Output> {
    let mut c = tokio::process::Command::new(cmd);
    c.args(args).stdin(Stdio::null()).kill_on_drop(true);
    tokio::time::timeout(limit, c.output())
        .await
        .with_context(|| format!("{cmd} took longer than {limit:?}"))?
        .with_context(|| format!("running {cmd}"))
}

// ---------------------------------------------------------------------------------------------
// Configurations

/// What the route-change run changes.
#[derive(Clone, Copy)]
struct Routes {
    /// The host `c.example` (to a-web's upstream) exists.
    c_host: bool,
    /// `b.example/api/` goes to b-web's upstream instead of b-api's.
    b_api_flipped: bool,
}

const BASE: Routes = Routes { c_host: false, b_api_flipped: false };

impl Routes {
    fn nth(i: u64) -> Routes {
        Routes { c_host: i.is_multiple_of(2), b_api_flipped: (i / 2).is_multiple_of(2) }
    }
    /// Route name -> upstream route name (port), for every host and path.
    fn table(self) -> Vec<(&'static str, &'static str, &'static str)> {
        let mut t = vec![
            ("a.example", "/api/", "a-api"),
            ("a.example", "/", "a-web"),
            ("b.example", "/api/", if self.b_api_flipped { "b-web" } else { "b-api" }),
            ("b.example", "/", "b-web"),
        ];
        if self.c_host {
            t.push(("c.example", "/", "a-web"));
        }
        t
    }
}

fn upstream_port(route: &str) -> u16 {
    UPSTREAM[ROUTES.iter().position(|r| *r == route).expect("a route")]
}

fn body() -> String {
    format!("anchor-upstream-ok-{:081}", 0)
}

fn upstream_conf(work: &Path) -> String {
    let mut servers = String::new();
    for (r, p) in ROUTES.iter().zip(UPSTREAM) {
        let _ = writeln!(
            servers,
            "  server {{ listen {LO}:{p} backlog=4096; location / {{ default_type text/plain; add_header X-Route {r}; return 200 \"{}\"; }} }}",
            body()
        );
    }
    format!(
        "worker_processes 1;\ndaemon off;\npid {w}/upstream.pid;\nerror_log {w}/upstream-error.log warn;\n\
         events {{ worker_connections 8192; }}\nhttp {{\n  access_log off;\n  keepalive_requests 1000000;\n{servers}}}\n",
        w = work.display()
    )
}

fn nginx_conf(work: &Path, routes: Routes) -> String {
    let (h, s, _) = Kind::Nginx.ports();
    let w = work.display();
    let mut up = String::new();
    for (r, p) in ROUTES.iter().zip(UPSTREAM) {
        let _ = writeln!(
            up,
            "  upstream {} {{ server {LO}:{p}; keepalive 64; keepalive_requests 1000000; }}",
            r.replace('-', "_")
        );
    }
    let _ = writeln!(up, "  upstream ws {{ server {LO}:{WS_PORT}; }}");
    let mut hosts: Vec<&str> = vec![];
    let table = routes.table();
    for (host, _, _) in &table {
        if !hosts.contains(host) {
            hosts.push(host);
        }
    }
    let mut servers = String::new();
    for host in hosts {
        let _ = writeln!(servers, "  server {{\n    listen {LO}:{h}; listen {LO}:{s} ssl; server_name {host};");
        for (_, path, r) in table.iter().filter(|(x, _, _)| *x == host) {
            let _ = writeln!(
                servers,
                "    location {path} {{ proxy_pass http://{}; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host $host; }}",
                r.replace('-', "_")
            );
        }
        servers.push_str("  }\n");
    }
    format!(
        "worker_processes 1;\ndaemon off;\npid {w}/nginx.pid;\nerror_log {w}/nginx-error.log warn;\n\
         events {{ worker_connections 8192; }}\nhttp {{\n  access_log off;\n  keepalive_requests 1000000;\n\
         ssl_certificate {w}/cert.pem;\n  ssl_certificate_key {w}/key.pem;\n  ssl_protocols TLSv1.2 TLSv1.3;\n\
         client_body_temp_path {w}/nginx-body;\n  proxy_temp_path {w}/nginx-proxy;\n  fastcgi_temp_path {w}/nginx-fcgi;\n\
         uwsgi_temp_path {w}/nginx-uwsgi;\n  scgi_temp_path {w}/nginx-scgi;\n{up}\
         \n  server {{ listen {LO}:{h} default_server; listen {LO}:{s} ssl default_server; return 404; }}\n{servers}\
         \n  server {{\n    listen {LO}:{h}; listen {LO}:{s} ssl; server_name ws.example;\n\
         location / {{ proxy_pass http://ws; proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; \
         proxy_set_header Connection \"upgrade\"; proxy_read_timeout 3600s; proxy_send_timeout 3600s; }}\n  }}\n}}\n"
    )
}

fn haproxy_cfg(work: &Path, routes: Routes) -> String {
    let (h, s, _) = Kind::Haproxy.ports();
    let w = work.display();
    let mut c = format!(
        "global\n    nbthread 1\n    maxconn 8000\n    pidfile {w}/haproxy.pid\n    tune.ssl.default-dh-param 2048\n\
         \x20   stats socket {w}/haproxy.sock mode 600 level admin expose-fd listeners\n\
         defaults\n    mode http\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n\
         \x20   timeout tunnel 1h\n    option http-keep-alive\n    http-reuse always\n\
         frontend fe\n    bind {LO}:{h}\n    bind {LO}:{s} ssl crt {w}/haproxy.pem\n    acl p_api path_beg /api/\n\
         \x20   use_backend ws if {{ hdr(host) -i ws.example }}\n"
    );
    for (host, path, r) in routes.table() {
        let cond = if path == "/api/" { " p_api" } else { "" };
        let _ = writeln!(c, "    use_backend {} if {{ hdr(host) -i {host} }}{cond}", r.replace('-', "_"));
    }
    c.push_str("    default_backend nomatch\nbackend nomatch\n    http-request return status 404\n");
    for (r, p) in ROUTES.iter().zip(UPSTREAM) {
        let _ = writeln!(c, "backend {}\n    server s1 {LO}:{p} maxconn 1000", r.replace('-', "_"));
    }
    let _ = writeln!(c, "backend ws\n    server s1 {LO}:{WS_PORT}");
    c
}

fn traefik_static(work: &Path) -> String {
    let (h, s, _) = Kind::Traefik.ports();
    format!(
        "global:\n  checkNewVersion: false\n  sendAnonymousUsage: false\nlog:\n  level: ERROR\n\
         entryPoints:\n  web:\n    address: \"{LO}:{h}\"\n  websecure:\n    address: \"{LO}:{s}\"\n\
         providers:\n  providersThrottleDuration: 0s\n  file:\n    filename: \"{}/traefik-dynamic.yml\"\n    watch: true\n",
        work.display()
    )
}

fn traefik_dynamic(work: &Path, routes: Routes) -> String {
    let mut routers = String::new();
    let mut n = 0;
    let mut router = |rule: String, service: &str, priority: u32| {
        for (ep, tls) in [("web", ""), ("websecure", "\n      tls: {}")] {
            n += 1;
            let _ = write!(
                routers,
                "    r{n}:\n      entryPoints: [{ep}]\n      rule: \"{rule}\"\n      service: {service}\n      priority: {priority}{tls}\n"
            );
        }
    };
    for (host, path, r) in routes.table() {
        if path == "/" {
            router(format!("Host(`{host}`)"), r, 10);
        } else {
            router(format!("Host(`{host}`) && PathPrefix(`{path}`)"), r, 20);
        }
    }
    router("Host(`ws.example`)".into(), "ws", 10);
    let mut services = String::new();
    for (r, p) in ROUTES.iter().zip(UPSTREAM) {
        let _ =
            writeln!(services, "    {r}:\n      loadBalancer:\n        servers:\n        - url: \"http://{LO}:{p}\"");
    }
    let _ =
        writeln!(services, "    ws:\n      loadBalancer:\n        servers:\n        - url: \"http://{LO}:{WS_PORT}\"");
    let w = work.display();
    format!(
        "http:\n  routers:\n{routers}  services:\n{services}tls:\n  certificates:\n  - certFile: {w}/cert.pem\n    keyFile: {w}/key.pem\n\
         \x20 stores:\n    default:\n      defaultCertificate:\n        certFile: {w}/cert.pem\n        keyFile: {w}/key.pem\n"
    )
}

fn indent(text: &str, by: &str) -> String {
    text.lines().map(|l| format!("{by}{l}\n")).collect()
}

fn weft_yaml(work: &Path, routes: Routes) -> Result<String> {
    let cert = std::fs::read_to_string(work.join("cert.pem"))?;
    let key = std::fs::read_to_string(work.join("key.pem"))?;
    let mut y = format!(
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata:\n  name: weft\n  annotations:\n    \
         ingressclass.kubernetes.io/is-default-class: \"true\"\nspec:\n  controller: weft.dev/ingress\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata:\n  name: bench-tls\n  namespace: bench\ntype: kubernetes.io/tls\nstringData:\n  \
         tls.crt: |\n{}  tls.key: |\n{}",
        indent(&cert, "    "),
        indent(&key, "    ")
    );
    let table = routes.table();
    let mut hosts: Vec<&str> = vec![];
    for (host, _, _) in &table {
        if !hosts.contains(host) {
            hosts.push(host);
        }
    }
    hosts.push("ws.example");
    for host in hosts {
        let name = host.split('.').next().unwrap_or(host);
        let mut paths = String::new();
        let rows: Vec<(&str, &str)> = if host == "ws.example" {
            vec![("/", "ws")]
        } else {
            table.iter().filter(|(h, _, _)| *h == host).map(|(_, p, r)| (*p, *r)).collect()
        };
        for (path, svc) in rows {
            let _ = write!(
                paths,
                "      - path: {path}\n        pathType: Prefix\n        backend:\n          service:\n            name: {svc}\n            port:\n              number: 80\n"
            );
        }
        let _ = write!(
            y,
            "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: bench\n  annotations:\n    \
             nginx.ingress.kubernetes.io/ssl-redirect: \"false\"\n    nginx.ingress.kubernetes.io/proxy-read-timeout: \"3600\"\n    \
             nginx.ingress.kubernetes.io/proxy-send-timeout: \"3600\"\nspec:\n  ingressClassName: weft\n  tls:\n  - hosts: [{host}]\n    \
             secretName: bench-tls\n  rules:\n  - host: {host}\n    http:\n      paths:\n{paths}"
        );
    }
    let svcs = ROUTES.iter().map(|r| (*r, upstream_port(r))).chain([("ws", WS_PORT)]);
    for (svc, port) in svcs {
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {svc}\n  namespace: bench\nspec:\n  ports:\n  - name: http\n    port: 80\n    \
             targetPort: {port}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {svc}-1\n  namespace: bench\n  \
             labels:\n    kubernetes.io/service-name: {svc}\naddressType: IPv4\nendpoints:\n- addresses: [\"{LO}\"]\n  conditions:\n    ready: true\n\
             ports:\n- name: http\n  port: {port}\n  protocol: TCP\n"
        );
    }
    Ok(y)
}

// ---------------------------------------------------------------------------------------------
// Proxies

struct Running {
    kind: Kind,
    proc: Proc,
}

fn write_config(kind: Kind, work: &Path, routes: Routes) -> Result<()> {
    match kind {
        Kind::Nginx => write_atomic(&work.join("nginx.conf"), &nginx_conf(work, routes)),
        Kind::Haproxy => write_atomic(&work.join("haproxy.cfg"), &haproxy_cfg(work, routes)),
        Kind::Traefik => write_atomic(&work.join("traefik-dynamic.yml"), &traefik_dynamic(work, routes)),
        Kind::Weft => write_atomic(&work.join("weft.yaml"), &weft_yaml(work, routes)?),
    }
}

async fn start(kind: Kind, args: &Args, work: &Path) -> Result<Running> {
    write_config(kind, work, BASE)?;
    let (h, s, m) = kind.ports();
    let w = work.display().to_string();
    let cmd = match kind {
        Kind::Nginx => {
            let conf = format!("{w}/nginx.conf");
            let t = run_tool("nginx", &["-t", "-c", &conf], Duration::from_secs(10)).await?;
            if !t.status.success() {
                bail!("nginx -t: {}", String::from_utf8_lossy(&t.stderr));
            }
            let mut c = tokio::process::Command::new("nginx");
            c.args(["-c", &conf]);
            c
        }
        Kind::Haproxy => {
            let cfg = format!("{w}/haproxy.cfg");
            let t = run_tool("haproxy", &["-c", "-q", "-f", &cfg], Duration::from_secs(10)).await?;
            if !t.status.success() {
                bail!("haproxy -c: {}{}", String::from_utf8_lossy(&t.stdout), String::from_utf8_lossy(&t.stderr));
            }
            let mut c = tokio::process::Command::new("haproxy");
            c.args(["-W", "-db", "-f", &cfg]);
            c
        }
        Kind::Traefik => {
            std::fs::write(work.join("traefik.yml"), traefik_static(work))?;
            let mut c = tokio::process::Command::new(&args.traefik_bin);
            c.arg(format!("--configFile={w}/traefik.yml")).env("GOMAXPROCS", "1");
            c
        }
        Kind::Weft => {
            let mut c = tokio::process::Command::new(&args.weft_bin);
            c.args(["--from-file", &format!("{w}/weft.yaml")])
                .args(["--http", &format!("{LO}:{h}"), "--https", &format!("{LO}:{s}")])
                .args(["--metrics", &format!("{LO}:{m}"), "--threads", "1", "--access-log=false"]);
            c
        }
    };
    let mut proc = Proc::spawn(kind.name(), cmd, work)?;
    // Ready: the unknown host gets its 404 on both listeners (at most 10 s).
    let t = Instant::now();
    loop {
        if proc.exited() {
            bail!("{} exited at start:\n{}", kind.name(), proc.log_tail());
        }
        let plain = probe(kind, false, "nope.example", "/").await.map(|r| r.0);
        let tls = probe(kind, true, "nope.example", "/").await.map(|r| r.0);
        if plain.as_deref() == Some("404") && tls.as_deref() == Some("404") {
            break;
        }
        if t.elapsed() > Duration::from_secs(10) {
            bail!("{} not ready after 10 s (got {plain:?} / {tls:?}):\n{}", kind.name(), proc.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Running { kind, proc })
}

/// One request with curl (SNI and Host set to `host`, the Host without a port, as wrk sends
/// it): status, `X-Route`, body.
async fn probe(kind: Kind, tls: bool, host: &str, path: &str) -> Option<(String, String, String)> {
    let (h, s, _) = kind.ports();
    let (scheme, port) = if tls { ("https", s) } else { ("http", h) };
    let resolve = format!("{host}:{port}:{LO}");
    let url = format!("{scheme}://{host}:{port}{path}");
    let out = run_tool(
        "curl",
        &["-sk", "--http1.1", "--max-time", "3", "-i", "--resolve", &resolve, "-H", &format!("Host: {host}"), &url],
        Duration::from_secs(5),
    )
    .await
    .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.lines().next()?.split_whitespace().nth(1)?.to_string();
    let route = head
        .lines()
        .find_map(|l| {
            l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("x-route")).map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    Some((status, route, body.to_string()))
}

/// The anchor's routing check, on both listeners: each route's upstream and body, 404 for an
/// unknown host.
async fn routing_check(kind: Kind) -> Vec<String> {
    let mut bad = vec![];
    for tls in [false, true] {
        let l = if tls { "tls" } else { "plain" };
        for (host, path, want) in [
            ("a.example", "/api/x", "a-api"),
            ("a.example", "/x", "a-web"),
            ("b.example", "/api/x", "b-api"),
            ("b.example", "/", "b-web"),
        ] {
            match probe(kind, tls, host, path).await {
                Some((st, r, b)) if st == "200" && r == want && b == body() => {}
                got => bad.push(format!("{l} {host}{path}: want 200 {want}, got {:?}", got.map(|(s, r, _)| (s, r)))),
            }
        }
        match probe(kind, tls, "nope.example", "/").await {
            Some((st, _, _)) if st == "404" => {}
            got => bad.push(format!("{l} unknown host: want 404, got {:?}", got.map(|g| g.0))),
        }
    }
    bad
}

// ---------------------------------------------------------------------------------------------
// wrk

#[derive(Clone, Debug, Default)]
struct Wrk {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    non2xx: u64,
    socket_errors: u64,
    errors_text: String,
}

const LUA: &str = r#"local reqs = {}
local n = 0
init = function(args)
  local combos = { {"a.example", "/api/v1/items"}, {"a.example", "/index.html"},
                   {"b.example", "/api/v2/users"}, {"b.example", "/"} }
  for i, c in ipairs(combos) do reqs[i] = wrk.format("GET", c[2], { ["Host"] = c[1] }) end
end
request = function() n = n % #reqs + 1; return reqs[n] end
"#;

fn to_ms(v: &str) -> f64 {
    let num = |s: &str| s.parse::<f64>().unwrap_or(f64::NAN);
    if let Some(x) = v.strip_suffix("us") {
        num(x) / 1000.0
    } else if let Some(x) = v.strip_suffix("ms") {
        num(x)
    } else if let Some(x) = v.strip_suffix('m') {
        num(x) * 60_000.0
    } else if let Some(x) = v.strip_suffix('s') {
        num(x) * 1000.0
    } else {
        f64::NAN
    }
}

fn parse_wrk(out: &str) -> Wrk {
    let mut w = Wrk { rps: f64::NAN, p50_ms: f64::NAN, p99_ms: f64::NAN, ..Wrk::default() };
    for line in out.lines() {
        let t = line.trim();
        let f: Vec<&str> = t.split_whitespace().collect();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            w.rps = v.trim().parse().unwrap_or(f64::NAN);
        } else if f.len() == 2 && f[0] == "50%" {
            w.p50_ms = to_ms(f[1]);
        } else if f.len() == 2 && f[0] == "99%" {
            w.p99_ms = to_ms(f[1]);
        } else if f.len() > 3 && f[1] == "requests" && f[2] == "in" {
            w.requests = f[0].parse().unwrap_or(0);
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            w.non2xx = v.trim().parse().unwrap_or(0);
            w.errors_text += t;
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            w.socket_errors = v.split(',').filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok()).sum();
            w.errors_text += t;
        }
    }
    w
}

async fn wrk(url: &str, lua: &Path, secs: u64) -> Result<Wrk> {
    let out = run_tool(
        "wrk",
        &[
            "-t1",
            &format!("-c{WRK_CONNS}"),
            &format!("-d{secs}s"),
            "--latency",
            "-s",
            &lua.display().to_string(),
            &format!("{url}/"),
        ],
        Duration::from_secs(secs + 30),
    )
    .await?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let w = parse_wrk(&text);
    if w.rps.is_nan() {
        bail!("wrk said: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(w)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

// ---------------------------------------------------------------------------------------------
// WebSockets

/// The echo upstream: every message back, until the client closes.
async fn ws_server(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
            while let Some(Ok(m)) = ws.next().await {
                if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[derive(Default)]
struct WsCounts {
    opened: AtomicU64,
    failed_to_open: AtomicU64,
    closed: AtomicU64,
    sent: AtomicU64,
    missed: AtomicU64,
}

/// A client through the proxy's plain listener (Host ws.example): a message each 100 ms, each
/// echo awaited (at most 2 s), until `stop`; a connection that ends before is counted closed.
async fn ws_client(addr: SocketAddr, stop: Arc<AtomicBool>, counts: Arc<WsCounts>, limit: Duration) {
    let t = Instant::now();
    let open = async {
        let tcp = TcpStream::connect(addr).await?;
        let req = "ws://ws.example/echo".into_client_request()?;
        anyhow::Ok(tokio_tungstenite::client_async(req, tcp).await?.0)
    };
    let mut ws = match tokio::time::timeout(Duration::from_secs(5), open).await {
        Ok(Ok(ws)) => ws,
        _ => {
            counts.failed_to_open.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    counts.opened.fetch_add(1, Ordering::Relaxed);
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) && t.elapsed() < limit {
        i += 1;
        let msg = format!("m{i}");
        counts.sent.fetch_add(1, Ordering::Relaxed);
        if ws.send(Message::text(msg.clone())).await.is_err() {
            counts.closed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
            Ok(Some(Ok(Message::Text(m)))) if m.as_str() == msg => {}
            Ok(Some(Ok(_))) | Err(_) => {
                counts.missed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(None) | Ok(Some(Err(_))) => {
                counts.closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
}

// ---------------------------------------------------------------------------------------------
// The run

struct Throughput {
    plain: Option<(f64, f64)>,
    tls: Option<(f64, f64)>,
    /// The proxy's CPU time per request in µs (medians of the rounds), plain and TLS: what it
    /// costs, apart from how the machine's cores were shared with wrk and the upstream.
    cpu_us: (f64, f64),
}

async fn throughput(args: &Args, work: &Path, kind: Kind) -> Result<Throughput> {
    let r = start(kind, args, work).await?;
    let bad = routing_check(kind).await;
    if !bad.is_empty() {
        bail!("{} routing check FAILED: {}", kind.name(), bad.join("; "));
    }
    println!("{}: routing check ok", kind.name());
    let lua = work.join("routes.lua");
    let mut res = Throughput { plain: None, tls: None, cpu_us: (f64::NAN, f64::NAN) };
    // /proc's ticks are USER_HZ, 100 a second on Linux whatever the kernel's HZ.
    let tick_us = 1e6 / 100.0;
    for tls in [false, true] {
        let mut rps = vec![];
        let mut p99 = vec![];
        let mut cpu = vec![];
        for round in 1..=args.rounds {
            let before = group_cpu_ticks(r.proc.pid);
            let w = wrk(&kind.url(tls), &lua, args.duration).await?;
            let us = (group_cpu_ticks(r.proc.pid) - before) as f64 * tick_us / w.requests.max(1) as f64;
            println!(
                "{:<8} {:<5} round {round}: {:>9.0} req/s  p50 {:>6.3} ms  p99 {:>6.3} ms  cpu {us:>5.1} us/req {} (load {})",
                kind.name(),
                if tls { "tls" } else { "plain" },
                w.rps,
                w.p50_ms,
                w.p99_ms,
                w.errors_text,
                std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split(' ').next().unwrap_or("?")
            );
            rps.push(w.rps);
            p99.push(w.p99_ms);
            cpu.push(us);
        }
        let m = (median(rps), median(p99));
        if tls {
            res.tls = Some(m);
            res.cpu_us.1 = median(cpu);
        } else {
            res.plain = Some(m);
            res.cpu_us.0 = median(cpu);
        }
    }
    drop(r);
    Ok(res)
}

struct Churn {
    changes: u64,
    reload_errors: u64,
    wrk: Wrk,
    ws: Arc<WsCounts>,
    ws_wanted: usize,
    final_ms: Option<u128>,
}

async fn churn(args: &Args, work: &Path, kind: Kind) -> Result<Churn> {
    let mut r = start(kind, args, work).await?;
    let (h, _, _) = kind.ports();
    let addr: SocketAddr = format!("{LO}:{h}").parse()?;
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(WsCounts::default());
    let limit = Duration::from_secs(args.duration + 30);
    let clients: Vec<_> =
        (0..args.ws).map(|_| tokio::spawn(ws_client(addr, stop.clone(), counts.clone(), limit))).collect();
    // All open (or failed) before the load and the changes start (at most 10 s).
    let t = Instant::now();
    while counts.opened.load(Ordering::Relaxed) + counts.failed_to_open.load(Ordering::Relaxed) < args.ws as u64
        && t.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _clients: Vec<Abort> = clients.iter().map(|c| Abort(c.abort_handle())).collect();
    let (lua, url, secs) = (work.join("routes.lua"), kind.url(false), args.duration);
    let load = tokio::spawn(async move { wrk(&url, &lua, secs).await });
    let _load = Abort(load.abort_handle());
    // Let wrk connect, then change the routes at the rate asked for, for the run.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let every = Duration::from_millis(1000 / args.rate);
    let n = (args.duration * 1000).saturating_sub(800) / every.as_millis().max(1) as u64;
    let mut changes = 0;
    let mut reload_errors = 0;
    let mut tick = tokio::time::interval(every);
    let t = Instant::now();
    for i in 0..n {
        tick.tick().await;
        if t.elapsed() > Duration::from_secs(args.duration) {
            break;
        }
        let ok = apply(&mut r, work, Routes::nth(i)).await;
        if let Err(e) = ok {
            if reload_errors == 0 {
                println!("{}: change {i} failed: {e:#}", kind.name());
            }
            reload_errors += 1;
        }
        changes += 1;
    }
    let w = load.await??;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = tokio::time::timeout(Duration::from_secs(5), c).await;
    }
    // The last state has c.example: served within 5 s?
    let last = Routes { c_host: true, b_api_flipped: false };
    let _ = apply(&mut r, work, last).await;
    let t = Instant::now();
    let mut final_ms = None;
    while t.elapsed() < Duration::from_secs(5) {
        if probe(kind, false, "c.example", "/").await.is_some_and(|p| p.0 == "200") {
            final_ms = Some(t.elapsed().as_millis());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(r);
    Ok(Churn { changes, reload_errors, wrk: w, ws: counts, ws_wanted: args.ws, final_ms })
}

async fn apply(r: &mut Running, work: &Path, routes: Routes) -> Result<()> {
    write_config(r.kind, work, routes)?;
    match r.kind {
        Kind::Nginx => r.proc.signal(Signal::SIGHUP),
        Kind::Haproxy => r.proc.signal(Signal::SIGUSR2),
        Kind::Traefik | Kind::Weft => Ok(()),
    }
}

fn ratio(a: Option<(f64, f64)>, b: Option<(f64, f64)>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format!("{:.2}x req/s, p99 {:.3} vs {:.3} ms", a.0 / b.0, a.1, b.1),
        _ => "n/a".into(),
    }
}

async fn bench(args: Args) -> Result<()> {
    let mut missing = vec![];
    let mut need = vec!["wrk", "curl", "openssl", "nginx"];
    if args.only.contains(&Kind::Haproxy) {
        need.push("haproxy");
    }
    for tool in need {
        if !have(tool) {
            missing.push(tool);
        }
    }
    if !missing.is_empty() {
        bail!("missing: {} (apt-get install {})", missing.join(", "), missing.join(" "));
    }
    let mut kinds = args.only.clone();
    if kinds.contains(&Kind::Weft) && !args.weft_bin.is_file() {
        bail!("{} not found: cargo build --release -p weft-ingress (or --weft-bin PATH)", args.weft_bin.display());
    }
    if kinds.contains(&Kind::Traefik) && !args.traefik_bin.is_file() {
        println!(
            "traefik: not measured: {} not found (build it with scripts/peers traefik, or --traefik-bin PATH)",
            args.traefik_bin.display()
        );
        kinds.retain(|k| *k != Kind::Traefik);
    }
    let mut ports: Vec<u16> = UPSTREAM.to_vec();
    ports.push(WS_PORT);
    for k in &kinds {
        let (h, s, m) = k.ports();
        ports.extend([h, s, m]);
    }
    let busy: Vec<String> = ports.iter().filter(|p| !port_free(**p)).map(|p| p.to_string()).collect();
    if !busy.is_empty() {
        bail!("ports busy on {LO}: {} (another ingress-bench?); refusing to run", busy.join(", "));
    }

    let work = tempfile::Builder::new().prefix("weft-ingress-bench-").tempdir()?;
    let w = work.path();
    let key = w.join("key.pem").display().to_string();
    let cert = w.join("cert.pem").display().to_string();
    let o = run_tool(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &cert,
            "-days",
            "2",
            "-subj",
            "/CN=a.example",
            "-addext",
            "subjectAltName=DNS:a.example,DNS:b.example,DNS:c.example,DNS:ws.example",
        ],
        Duration::from_secs(30),
    )
    .await?;
    if !o.status.success() {
        bail!("openssl req: {}", String::from_utf8_lossy(&o.stderr));
    }
    std::fs::write(w.join("haproxy.pem"), std::fs::read_to_string(&cert)? + &std::fs::read_to_string(&key)?)?;
    std::fs::write(w.join("routes.lua"), LUA)?;
    std::fs::write(w.join("upstream.conf"), upstream_conf(w))?;

    let mut up = tokio::process::Command::new("nginx");
    up.args(["-c", &w.join("upstream.conf").display().to_string()]);
    let mut upstream = Proc::spawn("upstream", up, w)?;
    let listener = TcpListener::bind((LO, WS_PORT)).await?;
    let _ws = Abort(tokio::spawn(ws_server(listener)).abort_handle());
    let t = Instant::now();
    while !futures::future::join_all(UPSTREAM.iter().map(|p| TcpStream::connect((LO, *p))))
        .await
        .iter()
        .all(|c| c.is_ok())
    {
        if upstream.exited() || t.elapsed() > Duration::from_secs(10) {
            bail!("the upstream nginx did not start:\n{}", upstream.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let version = |cmd: &'static str, arg: &'static str| async move {
        run_tool(cmd, &[arg], Duration::from_secs(10))
            .await
            .map(|o| {
                let s = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
                s.lines().next().unwrap_or_default().to_string()
            })
            .unwrap_or_default()
    };
    println!(
        "== ingress-bench: {}; {}; wrk -t1 -c{WRK_CONNS} -d{}s --latency x{} rounds, body {} B, 4 routes; {} CPUs; load {}",
        version("nginx", "-v").await,
        if kinds.contains(&Kind::Haproxy) { version("haproxy", "-v").await } else { String::new() },
        args.duration,
        args.rounds,
        body().len(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );

    let mut results: Vec<(Kind, Throughput)> = vec![];
    for k in &kinds {
        match throughput(&args, w, *k).await {
            Ok(t) => results.push((*k, t)),
            Err(e) => println!("{}: not measured: {e:#}", k.name()),
        }
    }
    let get = |k: Kind| results.iter().find(|(x, _)| *x == k).map(|(_, t)| t);
    println!("\n== throughput (median of {} x {} s; req/s, p99 ms)", args.rounds, args.duration);
    println!(
        "{:<8} {:>10} {:>9} {:>10} {:>9}   {:>12} {:>10}",
        "proxy", "plain", "p99", "tls", "p99", "cpu us/req", "tls cpu"
    );
    for (k, t) in &results {
        let f =
            |x: Option<(f64, f64)>| x.map_or(("-".into(), "-".into()), |(r, p)| (format!("{r:.0}"), format!("{p:.3}")));
        let (pr, pp) = f(t.plain);
        let (tr, tp) = f(t.tls);
        let (cp, ct) = t.cpu_us;
        println!("{:<8} {pr:>10} {pp:>9} {tr:>10} {tp:>9}   {cp:>12.1} {ct:>10.1}", k.name());
    }
    if let Some(wt) = get(Kind::Weft) {
        for other in [Kind::Nginx, Kind::Haproxy, Kind::Traefik] {
            if let Some(o) = get(other) {
                println!(
                    "weft/{:<8} plain {}; tls {}; cpu per request {:.2}x, tls {:.2}x",
                    other.name(),
                    ratio(wt.plain, o.plain),
                    ratio(wt.tls, o.tls),
                    wt.cpu_us.0 / o.cpu_us.0,
                    wt.cpu_us.1 / o.cpu_us.1
                );
            }
        }
        let goal = |w: Option<(f64, f64)>, n: Option<(f64, f64)>, t: Option<(f64, f64)>| match (w, n) {
            (Some(w), Some(n)) => {
                let vs_nginx = w.0 >= 1.2 * n.0 && w.1 <= n.1;
                let vs_traefik = t.is_none_or(|t| w.0 > t.0);
                if vs_nginx && vs_traefik { "met" } else { "NOT met" }
            }
            _ => "n/a",
        };
        let (n, t) = (get(Kind::Nginx), get(Kind::Traefik));
        println!(
            "goal: >= 1.2x nginx req/s at <= nginx's p99, ahead of Traefik: plain {}, tls {}{}",
            goal(wt.plain, n.and_then(|n| n.plain), t.and_then(|t| t.plain)),
            goal(wt.tls, n.and_then(|n| n.tls), t.and_then(|t| t.tls)),
            if t.is_none() { " (Traefik not measured)" } else { "" }
        );
    }

    if !args.changes {
        return Ok(());
    }
    println!(
        "\n== route changes: {} changes/s for {} s under wrk -t1 -c{WRK_CONNS} plus {} WebSockets (a message each 100 ms)",
        args.rate, args.duration, args.ws
    );
    let mut churns = vec![];
    for k in &kinds {
        match churn(&args, w, *k).await {
            Ok(c) => {
                let failed = c.wrk.non2xx + c.wrk.socket_errors;
                println!(
                    "{:<8} {} changes ({} failed to apply), {} requests, {failed} failed [{}], WebSockets: {}/{} open, {} closed, {} echoes missed of {}, last change served after {}",
                    k.name(),
                    c.changes,
                    c.reload_errors,
                    c.wrk.requests,
                    if c.wrk.errors_text.is_empty() { "none".into() } else { c.wrk.errors_text.clone() },
                    c.ws.opened.load(Ordering::Relaxed),
                    c.ws_wanted,
                    c.ws.closed.load(Ordering::Relaxed),
                    c.ws.missed.load(Ordering::Relaxed),
                    c.ws.sent.load(Ordering::Relaxed),
                    c.final_ms.map_or("NOT served in 5 s".into(), |m| format!("{m} ms"))
                );
                churns.push((*k, c));
            }
            Err(e) => println!("{}: route-change run failed: {e:#}", k.name()),
        }
    }
    if let Some((_, c)) = churns.iter().find(|(k, _)| *k == Kind::Weft) {
        let failed = c.wrk.non2xx + c.wrk.socket_errors;
        let closed = c.ws.closed.load(Ordering::Relaxed) + c.ws.failed_to_open.load(Ordering::Relaxed);
        println!(
            "goal: zero failed requests and zero closed WebSockets while routes change: {} ({failed} failed, {closed} closed)",
            if failed == 0 && closed == 0 && c.final_ms.is_some() { "met" } else { "NOT met" }
        );
    }
    drop(upstream);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    // Ctrl-C drops the run (and with it every process it started).
    tokio::select! {
        r = bench(args) => r,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("interrupted; stopping what was started");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output() {
        let out = "Running 10s test @ http://127.0.0.1:28080/\n  1 threads and 50 connections\n  Latency Distribution\n     50%  790.00us\n     75%    1.00ms\n     90%    1.20ms\n     99%    1.70ms\n  550000 requests in 10.00s, 120.00MB read\n  Socket errors: connect 0, read 3, write 1, timeout 0\n  Non-2xx or 3xx responses: 7\nRequests/sec:  55000.12\nTransfer/sec:     12.00MB\n";
        let w = parse_wrk(out);
        assert_eq!((w.requests, w.non2xx, w.socket_errors), (550000, 7, 4));
        assert!((w.rps - 55000.12).abs() < 1e-6 && (w.p50_ms - 0.79).abs() < 1e-9 && (w.p99_ms - 1.7).abs() < 1e-9);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(to_ms("1.5s"), 1500.0);
    }

    #[test]
    fn configurations_follow_the_routes() {
        let w = Path::new("/w");
        assert_eq!(body().len(), 100);
        let base = nginx_conf(w, BASE);
        assert!(!base.contains("c.example") && base.contains("location /api/ { proxy_pass http://b_api;"));
        let changed = nginx_conf(w, Routes { c_host: true, b_api_flipped: true });
        assert!(
            changed.contains("server_name c.example") && changed.contains("location /api/ { proxy_pass http://b_web;")
        );
        assert!(haproxy_cfg(w, Routes::nth(0)).contains("use_backend a_web if { hdr(host) -i c.example }"));
        assert!(traefik_dynamic(w, BASE).contains("rule: \"Host(`b.example`) && PathPrefix(`/api/`)\""));
        // Ten changes cover every state.
        let states: std::collections::HashSet<(bool, bool)> =
            (0..10).map(Routes::nth).map(|r| (r.c_host, r.b_api_flipped)).collect();
        assert_eq!(states.len(), 4);
    }

    #[test]
    fn weft_yaml_parses() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cert.pem"), "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n")
            .unwrap();
        std::fs::write(dir.path().join("key.pem"), "-----BEGIN PRIVATE KEY-----\nBBB\n-----END PRIVATE KEY-----\n")
            .unwrap();
        let y = weft_yaml(dir.path(), Routes { c_host: true, b_api_flipped: false }).unwrap();
        let i = weft_ingress::file::parse(&y).unwrap();
        assert_eq!(
            (i.ingresses.len(), i.services.len(), i.slices.len(), i.secrets.len(), i.classes.len()),
            (4, 5, 5, 1, 1)
        );
        let data = i.secrets[0].data.as_ref().unwrap();
        assert!(String::from_utf8_lossy(&data["tls.crt"].0).contains("AAA\n"));
    }
}
