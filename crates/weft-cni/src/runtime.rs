//! The runtime side of CNI: executing a plugin as containerd or CRI-O do (environment + stdin,
//! result or error on stdout), one plugin or a whole conflist with `prevResult` chaining. The lab's
//! kubelet, the tests and the benchmarks use it; the plugin uses it to delegate IPAM.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::plugin::Env;
use crate::spec::{CniError, CniResult, code};

/// Finds plugin `name` on a CNI_PATH-style list of directories.
pub fn find_plugin(name: &str, cni_path: &str) -> CniResult<PathBuf> {
    if name.contains('/') {
        return Err(CniError::config(format!("plugin type {name:?} may not contain '/'")));
    }
    for dir in cni_path.split(':').filter(|d| !d.is_empty()) {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(CniError::new(
        code::INVALID_CONFIG,
        format!("failed to find plugin {name:?} in path [{cni_path}]"),
        "install it or add its directory to CNI_PATH",
    ))
}

/// One invocation of a plugin binary.
pub struct Invocation<'a> {
    pub plugin: &'a Path,
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: &'a str,
    pub ifname: &'a str,
    pub args: &'a str,
    pub cni_path: &'a str,
    /// Run the plugin inside this network namespace (a lab node), as a runtime on that node would.
    pub node_netns: Option<&'a File>,
}

impl Invocation<'_> {
    /// Runs the plugin to completion, however long it takes (a runtime bounds it itself).
    pub fn run(&self, conf: &Value) -> CniResult<Option<Value>> {
        self.run_within(conf, None)
    }

    /// Runs the plugin; one still running after `timeout` is killed (with anything it started).
    pub fn run_within(&self, conf: &Value, timeout: Option<Duration>) -> CniResult<Option<Value>> {
        let mut cmd = Command::new(self.plugin);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into()))
            .env("CNI_COMMAND", self.command)
            .env("CNI_CONTAINERID", self.container_id)
            .env("CNI_NETNS", self.netns)
            .env("CNI_IFNAME", self.ifname)
            .env("CNI_ARGS", self.args)
            .env("CNI_PATH", self.cni_path);
        if let Some(ns) = self.node_netns {
            weft_netlink::ns::command_in_file(&mut cmd, ns).map_err(|e| CniError::io("node netns", e))?;
        }
        let body = serde_json::to_vec(conf).unwrap_or_default();
        let out = output_within(&mut cmd, body, timeout, &self.plugin.display().to_string())?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| {
                json!({"code": code::IO, "msg": format!("{} failed", self.plugin.display()), "details": String::from_utf8_lossy(&out.stderr)})
            });
            return Err(CniError::new(
                v["code"].as_u64().unwrap_or(code::IO as u64) as u32,
                v["msg"].as_str().unwrap_or("plugin failed"),
                v["details"].as_str().unwrap_or(""),
            ));
        }
        if text.trim().is_empty() {
            return Ok(None);
        }
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| CniError::new(code::DECODE, "the plugin printed something that is not JSON", e.to_string()))
    }
}

/// Runs `cmd` with `input` on its stdin and collects its output. With a timeout the child leads
/// its own process group, and when the time is up the group (the child's pid) is killed and the
/// child reaped: a hung plugin, or a shell script's `sleep`, never outlives the call.
pub fn output_within(cmd: &mut Command, input: Vec<u8>, timeout: Option<Duration>, what: &str) -> CniResult<Output> {
    if timeout.is_some() {
        cmd.process_group(0);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CniError::io(format!("cannot run {what}"), e))?;
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    // Threads feed and drain the pipes, so a child that neither reads nor exits cannot block us.
    let mut stdin = child.stdin.take().expect("stdin is piped");
    std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let stdout = drain(child.stdout.take().expect("stdout is piped"));
    let stderr = drain(child.stderr.take().expect("stderr is piped"));
    let status = wait_until(&mut child, deadline, timeout, what)?;
    let collect = |rx: mpsc::Receiver<Vec<u8>>| match deadline {
        Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now()).max(Duration::from_secs(1))).ok(),
        None => rx.recv().ok(),
    };
    let (Some(stdout), Some(stderr)) = (collect(stdout), collect(stderr)) else {
        return Err(CniError::io(format!("{what} exited but something it started keeps its output open"), ""));
    };
    Ok(Output { status, stdout, stderr })
}

fn drain(mut r: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![];
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    rx
}

fn wait_until(
    child: &mut Child,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
    what: &str,
) -> CniResult<std::process::ExitStatus> {
    let Some(deadline) = deadline else {
        return child.wait().map_err(|e| CniError::io(format!("waiting for {what}"), e));
    };
    let mut nap = Duration::from_millis(1);
    loop {
        if let Some(st) = child.try_wait().map_err(|e| CniError::io(format!("waiting for {what}"), e))? {
            return Ok(st);
        }
        if Instant::now() >= deadline {
            // Not reaped yet, so the pid (and the group it leads) is still this child's.
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.kill();
            let _ = child.wait();
            return Err(CniError::new(
                code::IO,
                format!("{what} did not finish within {:?} and was killed", timeout.unwrap_or_default()),
                "find out why it hangs; the command can be retried",
            ));
        }
        std::thread::sleep(nap.min(deadline.saturating_duration_since(Instant::now())));
        nap = (nap * 2).min(Duration::from_millis(50));
    }
}

/// Used by the plugin to delegate IPAM to another binary, with its own invocation's environment,
/// bounded by the invocation's exec timeout.
pub async fn exec_plugin(name: &str, command: &str, env: &Env, conf: &Value) -> CniResult<Option<Value>> {
    let cni_path = env.path.as_str();
    let plugin = find_plugin(name, cni_path)?;
    let inv = Invocation {
        plugin: &plugin,
        command,
        container_id: &env.container_id,
        netns: &env.netns,
        ifname: &env.ifname,
        args: &env.args,
        cni_path,
        node_netns: None,
    };
    inv.run_within(conf, Some(env.exec_timeout()))
}

/// A network configuration list (`.conflist`): plugins run in order for ADD, each given the
/// previous one's result as `prevResult`, and in reverse for DEL.
pub struct ConfList {
    pub version: String,
    pub name: String,
    pub plugins: Vec<Value>,
}

impl ConfList {
    /// Accepts a conflist or a single plugin configuration.
    pub fn parse(v: &Value) -> CniResult<ConfList> {
        let version = v["cniVersion"].as_str().unwrap_or("1.0.0").to_string();
        let name = v["name"].as_str().unwrap_or("").to_string();
        let plugins = match v.get("plugins").and_then(|p| p.as_array()) {
            Some(p) => p.clone(),
            None => vec![v.clone()],
        };
        if plugins.is_empty() {
            return Err(CniError::config("the conflist has no plugins"));
        }
        Ok(ConfList { version, name, plugins })
    }

    fn conf_for(&self, plugin: &Value, prev: Option<&Value>, runtime_config: &Value) -> Value {
        let mut c = plugin.clone();
        c["cniVersion"] = json!(self.version);
        c["name"] = json!(self.name);
        if let Some(p) = prev {
            c["prevResult"] = p.clone();
        }
        // runtimeConfig is passed only for the capabilities a plugin declares.
        if let (Some(caps), Some(rc)) =
            (plugin.get("capabilities").and_then(|c| c.as_object()), runtime_config.as_object())
        {
            let mut sel = serde_json::Map::new();
            for (k, on) in caps {
                if on.as_bool() == Some(true)
                    && let Some(x) = rc.get(k)
                {
                    sel.insert(k.clone(), x.clone());
                }
            }
            if !sel.is_empty() {
                c["runtimeConfig"] = Value::Object(sel);
            }
        }
        c
    }

    /// ADD through every plugin; returns the last result.
    pub fn add(&self, base: &Invocation, runtime_config: &Value) -> CniResult<Value> {
        let mut prev: Option<Value> = None;
        for p in &self.plugins {
            let ty = p["type"].as_str().unwrap_or("");
            let bin = find_plugin(ty, base.cni_path)?;
            let inv = Invocation { plugin: &bin, command: "ADD", ..*base };
            prev = inv.run(&self.conf_for(p, prev.as_ref(), runtime_config))?.or(prev);
        }
        prev.ok_or_else(|| CniError::new(code::IO, "the plugins returned no result", ""))
    }

    /// DEL through every plugin in reverse; every plugin is tried, the first error is returned.
    pub fn del(&self, base: &Invocation, prev: Option<&Value>, runtime_config: &Value) -> CniResult<()> {
        let mut first_err = None;
        for p in self.plugins.iter().rev() {
            let ty = p["type"].as_str().unwrap_or("");
            let r = find_plugin(ty, base.cni_path).and_then(|bin| {
                let inv = Invocation { plugin: &bin, command: "DEL", ..*base };
                inv.run(&self.conf_for(p, prev, runtime_config))
            });
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    pub fn check(&self, base: &Invocation, prev: &Value, runtime_config: &Value) -> CniResult<()> {
        for p in &self.plugins {
            let bin = find_plugin(p["type"].as_str().unwrap_or(""), base.cni_path)?;
            let inv = Invocation { plugin: &bin, command: "CHECK", ..*base };
            inv.run(&self.conf_for(p, Some(prev), runtime_config))?;
        }
        Ok(())
    }

    /// GC with the attachments that are still valid.
    pub fn gc(&self, base: &Invocation, valid: &[(String, String)]) -> CniResult<()> {
        let list: Vec<Value> = valid.iter().map(|(c, i)| json!({"containerID": c, "ifname": i})).collect();
        for p in &self.plugins {
            let bin = find_plugin(p["type"].as_str().unwrap_or(""), base.cni_path)?;
            let inv = Invocation { plugin: &bin, command: "GC", container_id: "", netns: "", ifname: "", ..*base };
            let mut c = self.conf_for(p, None, &Value::Null);
            c["cni.dev/valid-attachments"] = json!(list);
            inv.run(&c)?;
        }
        Ok(())
    }
}
