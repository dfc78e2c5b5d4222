//! Hostile input to the plugin binary, as a runtime (or anyone who can run it) could give it:
//! every answer is the spec's error JSON on stdout and a non-zero exit, never a panic, and
//! nothing is touched. Needs no root: each case fails before any namespace is opened.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use weft_cni::spec::code;

const WEFT_CNI: &str = env!("CARGO_BIN_EXE_weft-cni");

fn conf(dir: &str) -> Value {
    json!({"cniVersion": "1.1.0", "name": "weft-hostile", "type": "weft-cni", "bridge": "cni-h",
           "ipam": {"type": "host-local", "dataDir": dir, "ranges": [[{"subnet": "10.250.0.0/24"}]]}})
}

/// Runs the binary with exactly `env` and `stdin`; returns the exit code and stdout's JSON.
fn invoke(env: &[(&OsStr, &OsStr)], stdin: &[u8]) -> (i32, Value) {
    let mut cmd = Command::new(WEFT_CNI);
    cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    use std::io::Write;
    // The plugin may refuse its environment before it reads stdin.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "the plugin panicked: {stderr}");
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code().unwrap_or(-1), v)
}

fn attach_env<'a>(
    cmd: &'a str,
    id: &'a str,
    netns: &'a str,
    ifname: &'a str,
    args: &'a str,
) -> Vec<(&'a OsStr, &'a OsStr)> {
    [
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", ifname),
        ("CNI_ARGS", args),
        ("CNI_PATH", "/usr/lib/cni"),
    ]
    .into_iter()
    .map(|(k, v)| (OsStr::new(k), OsStr::new(v)))
    .collect()
}

fn assert_spec_error(what: &str, (rc, v): (i32, Value), want: u32) {
    assert_eq!(rc, 1, "{what}: exit code, {v}");
    assert_eq!(v["code"], want, "{what}: {v}");
    assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {v}");
    assert_eq!(v["cniVersion"], "1.1.0", "{what}: {v}");
}

const HOSTILE: &[&str] = &["../../etc/x", "a/../b", "a\nb", "a\r\nb", "a\"b", "a'b", "a\"\nflush ruleset\n"];

#[test]
fn hostile_environment_gets_spec_errors() {
    let d = tempfile::tempdir().unwrap();
    let stdin = conf(d.path().to_str().unwrap()).to_string();
    let ns = "/run/netns/weft-hostile-none";
    for cmd in ["ADD", "DEL", "CHECK"] {
        for bad in HOSTILE {
            let (netns, args) = (format!("/run/netns/{bad}"), format!("K8S_POD_NAME={bad}"));
            let cases = [
                ("CNI_CONTAINERID", attach_env(cmd, bad, ns, "eth0", "")),
                ("CNI_IFNAME", attach_env(cmd, "c1", ns, bad, "")),
                ("CNI_NETNS", attach_env(cmd, "c1", &netns, "eth0", "")),
                ("CNI_ARGS", attach_env(cmd, "c1", ns, "eth0", &args)),
            ];
            for (var, env) in cases {
                let what = format!("{cmd} {var}={bad:?}");
                let r = invoke(&env, stdin.as_bytes());
                assert_spec_error(&what, r.clone(), code::INVALID_ENV);
                assert!(r.1["msg"].as_str().unwrap().contains(var), "{what}: {}", r.1);
            }
        }
    }
    // Nothing was made in the data directory beyond the network's own directory.
    let made: Vec<_> = std::fs::read_dir(d.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(made.iter().all(|n| n == "weft-hostile"), "{made:?}");
}

#[test]
fn hostile_configuration_gets_spec_errors() {
    let d = tempfile::tempdir().unwrap();
    let env = attach_env("ADD", "c1", "/run/netns/weft-hostile-none", "eth0", "");
    for bad in HOSTILE {
        let mut c = conf(d.path().to_str().unwrap());
        c["name"] = json!(bad);
        assert_spec_error(&format!("name {bad:?}"), invoke(&env, c.to_string().as_bytes()), code::INVALID_CONFIG);
        let mut c = conf(d.path().to_str().unwrap());
        c["bridge"] = json!(bad);
        assert_spec_error(&format!("bridge {bad:?}"), invoke(&env, c.to_string().as_bytes()), code::INVALID_CONFIG);
        for m in [
            json!({"hostPort": 8080, "containerPort": 80, "hostIP": bad}),
            json!({"hostPort": 8080, "containerPort": 80, "protocol": bad}),
        ] {
            let mut c = conf(d.path().to_str().unwrap());
            c["runtimeConfig"] = json!({"portMappings": [m]});
            let r = invoke(&env, c.to_string().as_bytes());
            assert_spec_error(&format!("portMappings {m}"), r, code::INVALID_CONFIG);
        }
    }
    // Not JSON, not UTF-8, not an object: decode errors.
    for stdin in [&b"{"[..], b"\xff\xfe", b"[]", b"\"name\"", b""] {
        let (rc, v) = invoke(&env, stdin);
        assert_eq!(rc, 1, "{v}");
        assert_eq!(v["code"], code::DECODE, "{stdin:?}: {v}");
    }
}

#[test]
fn environment_that_is_not_utf8_gets_spec_errors() {
    let d = tempfile::tempdir().unwrap();
    let stdin = conf(d.path().to_str().unwrap()).to_string();
    let bad = OsStr::from_bytes(b"c\xff1");
    // An unrelated variable that is not UTF-8 does not stop the plugin.
    let mut env = attach_env("VERSION", "", "", "", "");
    env.push((OsStr::new("JUNK"), bad));
    let (rc, v) = invoke(&env, b"");
    assert_eq!((rc, v["cniVersion"].as_str()), (0, Some("1.1.0")), "{v}");
    for var in ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS", "CNI_ARGS"] {
        let mut env: Vec<_> = attach_env("DEL", "c1", "", "eth0", "").into_iter().filter(|(k, _)| *k != var).collect();
        env.push((OsStr::new(var), bad));
        let r = invoke(&env, stdin.as_bytes());
        assert_spec_error(var, r.clone(), code::INVALID_ENV);
        assert!(r.1["msg"].as_str().unwrap().contains(var), "{var}: {}", r.1);
    }
}
