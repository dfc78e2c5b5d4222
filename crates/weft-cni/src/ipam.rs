//! `host-local` IPAM, built in, on the reference plugin's on-disk layout so a node can switch
//! between the two: `<dataDir>/<network>/<ip>` holds "containerID\r\nifname",
//! `last_reserved_ip.<range set>` remembers where the last search ended, and `lock` is taken with
//! `flock` for every change, so any number of concurrent ADDs (of either plugin) never hand out one
//! address twice. A reservation is one `O_EXCL` file create: a plugin killed mid-ADD leaves at most
//! a file naming its container, which GC (or DEL) reclaims.

use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use nix::fcntl::{Flock, FlockArg};

use crate::spec::{Attachment, CniError, CniResult, Range, code};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v) => u32::from(v) as u128,
        IpAddr::V6(v) => u128::from(v),
    }
}

fn from_u128(v: u128, v6: bool) -> IpAddr {
    if v6 { IpAddr::V6(Ipv6Addr::from(v)) } else { IpAddr::V4(Ipv4Addr::from(v as u32)) }
}

/// A range with its defaults filled in as host-local does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canonical {
    pub subnet: IpNet,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: IpAddr,
}

pub fn canonicalize(r: &Range) -> CniResult<Canonical> {
    let net = r.subnet.trunc();
    let v6 = matches!(net, IpNet::V6(_));
    let first = to_u128(net.network()) + 1;
    let last = if v6 { to_u128(net.broadcast()) } else { to_u128(net.broadcast()).saturating_sub(1) };
    if net.prefix_len() >= net.max_prefix_len() - 1 {
        return Err(CniError::config(format!(
            "subnet {} is too small to allocate from: use a /30 or larger",
            r.subnet
        )));
    }
    let check = |ip: IpAddr, what: &str| -> CniResult<IpAddr> {
        if !net.contains(&ip) || to_u128(ip) < first || to_u128(ip) > last {
            return Err(CniError::config(format!("{what} {ip} is not a usable address of subnet {net}")));
        }
        Ok(ip)
    };
    let start = check(r.range_start.unwrap_or(from_u128(first, v6)), "rangeStart")?;
    let end = check(r.range_end.unwrap_or(from_u128(last, v6)), "rangeEnd")?;
    if to_u128(start) > to_u128(end) {
        return Err(CniError::config(format!("rangeStart {start} is after rangeEnd {end}")));
    }
    let gateway = match r.gateway {
        Some(g) if !net.contains(&g) => {
            return Err(CniError::config(format!("gateway {g} is not in subnet {net}")));
        }
        Some(g) => g,
        None => from_u128(first, v6),
    };
    Ok(Canonical { subnet: net, start, end, gateway })
}

/// A range set is one family, and its ranges do not overlap (as host-local checks): so an
/// address has one owner, and the set's size fits in a u128.
pub fn check_set(ranges: &[Canonical], idx: usize) -> CniResult<()> {
    for (i, a) in ranges.iter().enumerate() {
        for b in &ranges[i + 1..] {
            if a.start.is_ipv4() != b.start.is_ipv4() {
                return Err(CniError::config(format!(
                    "ipam.ranges[{idx}] mixes IPv4 and IPv6 ({} and {}): put each family in its own range set",
                    a.subnet, b.subnet
                )));
            }
            if to_u128(a.start) <= to_u128(b.end) && to_u128(b.start) <= to_u128(a.end) {
                return Err(CniError::config(format!(
                    "ipam.ranges[{idx}]: ranges {}-{} and {}-{} overlap: make them disjoint",
                    a.start, a.end, b.start, b.end
                )));
            }
        }
    }
    Ok(())
}

/// One allocated address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: IpNet,
    pub gateway: IpAddr,
}

pub struct HostLocal {
    dir: PathBuf,
}

fn owner_line(id: &str, ifname: &str) -> String {
    format!("{id}\r\n{ifname}")
}

/// (containerID, ifname) from a reservation file; the oldest format has only the ID.
fn parse_owner(text: &str) -> (String, String) {
    let mut it = text.split("\r\n");
    let id = it.next().unwrap_or("").trim().to_string();
    let ifname = it.next().unwrap_or("").trim().to_string();
    (id, ifname)
}

impl HostLocal {
    pub fn open(data_dir: Option<&str>, network: &str) -> CniResult<HostLocal> {
        let dir = Path::new(data_dir.unwrap_or(DEFAULT_DATA_DIR)).join(network);
        fs::create_dir_all(&dir)
            .map_err(|e| CniError::io(format!("cannot create the IPAM directory {}", dir.display()), e))?;
        Ok(HostLocal { dir })
    }

    fn lock(&self) -> CniResult<Flock<fs::File>> {
        let p = self.dir.join("lock");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o644)
            .open(&p)
            .map_err(|e| CniError::io(format!("cannot open {}", p.display()), e))?;
        Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| CniError::io("cannot lock the IPAM directory", e))
    }

    /// Every reservation: (ip, containerID, ifname).
    pub fn reservations(&self) -> Vec<(IpAddr, String, String)> {
        let mut out = vec![];
        let Ok(rd) = fs::read_dir(&self.dir) else { return out };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Ok(ip) = name.parse::<IpAddr>() {
                let text = fs::read_to_string(e.path()).unwrap_or_default();
                let (id, ifname) = parse_owner(&text);
                out.push((ip, id, ifname));
            }
        }
        out
    }

    /// Reserves one address from each range set for (id, ifname); an existing reservation of the
    /// same attachment is returned again (so a retried ADD gets the same address).
    pub fn allocate(&self, sets: &[Vec<Range>], id: &str, ifname: &str) -> CniResult<Vec<Lease>> {
        let _lock = self.lock()?;
        let existing = self.reservations();
        let mut leases = vec![];
        let mut made: Vec<PathBuf> = vec![];
        let result = (|| {
            for (idx, set) in sets.iter().enumerate() {
                let ranges: Vec<Canonical> = set.iter().map(canonicalize).collect::<CniResult<_>>()?;
                if ranges.is_empty() {
                    return Err(CniError::config(format!("ipam.ranges[{idx}] is empty: give it at least one subnet")));
                }
                check_set(&ranges, idx)?;
                if let Some((ip, _, _)) = existing
                    .iter()
                    .find(|(ip, i, f)| i == id && f == ifname && ranges.iter().any(|r| r.subnet.contains(ip)))
                {
                    let r = ranges.iter().find(|r| r.subnet.contains(ip)).unwrap();
                    leases.push(Lease { address: IpNet::new(*ip, r.subnet.prefix_len()).unwrap(), gateway: r.gateway });
                    continue;
                }
                let last_file = self.dir.join(format!("last_reserved_ip.{idx}"));
                let last: Option<IpAddr> = fs::read_to_string(&last_file).ok().and_then(|s| s.trim().parse().ok());
                let (lease, path) = self.reserve(&ranges, last, id, ifname).ok_or_else(|| {
                    let subnets: Vec<String> = ranges.iter().map(|r| r.subnet.to_string()).collect();
                    CniError::new(
                        code::IO,
                        format!("no IP addresses available in range set: {}", subnets.join(", ")),
                        "free addresses with DEL or GC, or widen the range",
                    )
                })?;
                made.push(path);
                let _ = fs::write(&last_file, lease.address.addr().to_string());
                leases.push(lease);
            }
            Ok(leases)
        })();
        if result.is_err() {
            // Nothing half-made: undo this call's reservations.
            for p in made {
                let _ = fs::remove_file(p);
            }
        }
        result
    }

    fn reserve(&self, ranges: &[Canonical], last: Option<IpAddr>, id: &str, ifname: &str) -> Option<(Lease, PathBuf)> {
        // Candidates in order, starting after the last reserved address (as host-local does).
        // Disjoint ranges of one family (check_set) never sum past u128::MAX; saturate anyway.
        let total = ranges.iter().fold(0u128, |t, r| t.saturating_add(to_u128(r.end) - to_u128(r.start) + 1));
        let start_at = last.and_then(|l| {
            let mut off = 0u128;
            for r in ranges {
                if r.subnet.contains(&l) && to_u128(l) >= to_u128(r.start) && to_u128(l) <= to_u128(r.end) {
                    return Some(off + to_u128(l) - to_u128(r.start) + 1);
                }
                off += to_u128(r.end) - to_u128(r.start) + 1;
            }
            None
        });
        let start_at = start_at.unwrap_or(0);
        for i in 0..total.min(1 << 24) {
            let mut k = start_at.saturating_add(i) % total;
            let mut range = &ranges[0];
            for r in ranges {
                let n = to_u128(r.end) - to_u128(r.start) + 1;
                if k < n {
                    range = r;
                    break;
                }
                k -= n;
            }
            let v6 = matches!(range.subnet, IpNet::V6(_));
            let ip = from_u128(to_u128(range.start) + k, v6);
            if ip == range.gateway {
                continue;
            }
            let path = self.dir.join(ip.to_string());
            match fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(&path) {
                Ok(mut f) => {
                    if f.write_all(owner_line(id, ifname).as_bytes()).is_err() {
                        let _ = fs::remove_file(&path);
                        continue;
                    }
                    return Some((
                        Lease { address: IpNet::new(ip, range.subnet.prefix_len()).unwrap(), gateway: range.gateway },
                        path,
                    ));
                }
                Err(_) => continue,
            }
        }
        None
    }

    /// Releases every address of (id, ifname). Releasing nothing is not an error.
    pub fn release(&self, id: &str, ifname: &str) -> CniResult<()> {
        let _lock = self.lock()?;
        for (ip, i, f) in self.reservations() {
            // The oldest layout stored only the container ID.
            if i == id && (f == ifname || f.is_empty()) {
                let _ = fs::remove_file(self.dir.join(ip.to_string()));
            }
        }
        Ok(())
    }

    /// Releases every address whose attachment is not in `valid` (CNI GC).
    pub fn gc(&self, valid: &[Attachment]) -> CniResult<usize> {
        let _lock = self.lock()?;
        let mut freed = 0;
        for (ip, i, f) in self.reservations() {
            if !valid.iter().any(|a| a.container_id == i && (a.ifname == f || f.is_empty())) {
                let _ = fs::remove_file(self.dir.join(ip.to_string()));
                freed += 1;
            }
        }
        Ok(freed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(s: &str) -> Vec<Vec<Range>> {
        vec![vec![Range { subnet: s.parse().unwrap(), ..Default::default() }]]
    }

    #[test]
    fn allocates_like_host_local() {
        let d = tempfile::tempdir().unwrap();
        let h = HostLocal::open(Some(d.path().to_str().unwrap()), "net").unwrap();
        let a = h.allocate(&range("10.88.0.0/16"), "c1", "eth0").unwrap();
        assert_eq!(a[0].address.to_string(), "10.88.0.2/16");
        assert_eq!(a[0].gateway.to_string(), "10.88.0.1");
        let b = h.allocate(&range("10.88.0.0/16"), "c2", "eth0").unwrap();
        assert_eq!(b[0].address.to_string(), "10.88.0.3/16");
        // Same attachment again: same address.
        assert_eq!(h.allocate(&range("10.88.0.0/16"), "c1", "eth0").unwrap(), a);
        assert_eq!(fs::read_to_string(d.path().join("net/10.88.0.2")).unwrap(), "c1\r\neth0");
        assert_eq!(fs::read_to_string(d.path().join("net/last_reserved_ip.0")).unwrap(), "10.88.0.3");
        h.release("c1", "eth0").unwrap();
        h.release("c1", "eth0").unwrap();
        assert!(!d.path().join("net/10.88.0.2").exists());
    }

    #[test]
    fn exhaustion_and_gc() {
        let d = tempfile::tempdir().unwrap();
        let h = HostLocal::open(Some(d.path().to_str().unwrap()), "net").unwrap();
        // A /29 has .1 (gateway) .. .6 usable: 5 addresses.
        for i in 0..5 {
            h.allocate(&range("10.0.0.0/29"), &format!("c{i}"), "eth0").unwrap();
        }
        let e = h.allocate(&range("10.0.0.0/29"), "c9", "eth0").unwrap_err();
        assert!(e.msg.contains("no IP addresses available"), "{e:?}");
        let valid = vec![Attachment { container_id: "c1".into(), ifname: "eth0".into() }];
        assert_eq!(h.gc(&valid).unwrap(), 4);
        assert_eq!(h.reservations().len(), 1);
        h.allocate(&range("10.0.0.0/29"), "c9", "eth0").unwrap();
    }

    #[test]
    fn dual_stack_gets_one_address_per_set() {
        let d = tempfile::tempdir().unwrap();
        let h = HostLocal::open(Some(d.path().to_str().unwrap()), "net").unwrap();
        let sets = vec![
            vec![Range { subnet: "10.1.0.0/24".parse().unwrap(), ..Default::default() }],
            vec![Range { subnet: "fd00:10::/64".parse().unwrap(), ..Default::default() }],
        ];
        let l = h.allocate(&sets, "c", "eth0").unwrap();
        assert_eq!(l[0].address.to_string(), "10.1.0.2/24");
        assert_eq!(l[1].address.to_string(), "fd00:10::2/64");
        assert_eq!(l[1].gateway.to_string(), "fd00:10::1");
    }

    #[test]
    fn bad_ranges_are_config_errors() {
        let r = Range {
            subnet: "10.0.0.0/24".parse().unwrap(),
            range_start: Some("10.0.1.5".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(canonicalize(&r).unwrap_err().code, code::INVALID_CONFIG);
        let r = Range { subnet: "10.0.0.0/31".parse().unwrap(), ..Default::default() };
        assert!(canonicalize(&r).is_err());
    }

    #[test]
    fn huge_or_overlapping_ranges_are_errors_not_panics() {
        let d = tempfile::tempdir().unwrap();
        let h = HostLocal::open(Some(d.path().to_str().unwrap()), "net").unwrap();
        let half = Range { subnet: "::/1".parse().unwrap(), ..Default::default() };
        // Three halves of the IPv6 space add up to more than u128 counts.
        let e = h.allocate(&[vec![half.clone(), half.clone(), half]], "c", "eth0").unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG, "{e:?}");
        assert!(e.msg.contains("overlap"), "{e:?}");
        let all = Range { subnet: "::/0".parse().unwrap(), ..Default::default() };
        assert_eq!(h.allocate(&[vec![all]], "c", "eth0").unwrap()[0].address.to_string(), "::2/0");
    }

    #[test]
    fn concurrent_allocations_never_collide() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_str().unwrap().to_string();
        let handles: Vec<_> = (0..16)
            .map(|t| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    let h = HostLocal::open(Some(&dir), "net").unwrap();
                    (0..20)
                        .map(|i| h.allocate(&range("10.9.0.0/16"), &format!("c{t}-{i}"), "eth0").unwrap()[0].address)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<IpNet> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 320);
    }
}
