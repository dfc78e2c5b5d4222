//! The namespace the codec's kernel tests work in: made with `ip netns add` (the tool, not the
//! code under test), removed on drop, also when an assertion fails.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

pub struct Ns(pub String);

impl Ns {
    pub fn new(tag: &str) -> Ns {
        let ns = Ns(format!("weft-nl-{tag}-{}", std::process::id()));
        assert!(Command::new("ip").args(["netns", "add", &ns.0]).status().unwrap().success());
        ns
    }
    /// `ip -n NS ARGS`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        assert!(Command::new("ip").args(["-n", &self.0]).args(args).status().unwrap().success(), "{args:?}");
    }
    pub fn path(&self) -> PathBuf {
        format!("/run/netns/{}", self.0).into()
    }
    /// `nft ARGS` inside: an independent witness of what the kernel holds.
    pub fn nft(&self, args: &[&str]) -> String {
        let o = Command::new("ip").args(["netns", "exec", &self.0, "nft"]).args(args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}
