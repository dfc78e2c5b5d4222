//! ClusterIP and NodePort allocation, as kube-apiserver does it: explicit values are checked
//! against the range and against what is taken; dynamic values come from a random start, with
//! the low end of the service range left for static IPs (the kube-dns 10.96.0.10 convention).
//! The allocators live in memory and are rebuilt from the stored Services at start. A write
//! takes what it needs through a [`Reservation`], which gives it all back unless the write
//! commits, so no error path can leak an address or a port.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;
use std::sync::{Mutex, MutexGuard};

use ipnet::IpNet;

#[derive(Debug, PartialEq, Eq)]
pub enum AllocError {
    OutOfRange(String),
    Taken,
    Full,
}

pub struct IpAllocator {
    net: IpNet,
    used: HashSet<IpAddr>,
    /// Offsets below this are preferred for static addresses and used for dynamic ones last.
    static_band: u128,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v) => u32::from(v) as u128,
        IpAddr::V6(v) => u128::from(v),
    }
}

impl IpAllocator {
    pub fn new(net: IpNet) -> Self {
        let size = Self::size_of(&net);
        let static_band = (size / 16).clamp(16, 256).min(size);
        IpAllocator { net: net.trunc(), used: HashSet::new(), static_band }
    }

    fn size_of(net: &IpNet) -> u128 {
        let host_bits = (net.max_prefix_len() - net.prefix_len()) as u32;
        if host_bits >= 127 { u128::MAX } else { (1u128 << host_bits).saturating_sub(2) }
    }

    pub fn range(&self) -> String {
        self.net.to_string()
    }

    pub fn net(&self) -> IpNet {
        self.net
    }

    /// The n-th usable address (n from 1), as kube-apiserver numbers them (network address excluded).
    pub fn nth(&self, n: u128) -> Option<IpAddr> {
        if n == 0 || n > Self::size_of(&self.net) {
            return None;
        }
        let base = to_u128(self.net.network());
        Some(match self.net {
            IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from((base + n) as u32)),
            IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(base + n)),
        })
    }

    pub fn allocate(&mut self, ip: IpAddr) -> Result<(), AllocError> {
        let n = to_u128(ip).wrapping_sub(to_u128(self.net.network()));
        if !self.net.contains(&ip) || n == 0 || n > Self::size_of(&self.net) {
            return Err(AllocError::OutOfRange(format!(
                "the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}",
                self.net
            )));
        }
        if !self.used.insert(ip) {
            return Err(AllocError::Taken);
        }
        Ok(())
    }

    pub fn allocate_next(&mut self) -> Result<IpAddr, AllocError> {
        let size = Self::size_of(&self.net).min(1 << 24);
        let dynamic = size.saturating_sub(self.static_band);
        // Dynamic band first (random start, then a scan), then the static band.
        let start = if dynamic > 0 { rand::random::<u64>() as u128 % dynamic } else { 0 };
        let candidates = (0..dynamic).map(|i| self.static_band + 1 + (start + i) % dynamic).chain(1..=self.static_band);
        for n in candidates {
            if let Some(ip) = self.nth(n)
                && self.used.insert(ip)
            {
                return Ok(ip);
            }
        }
        Err(AllocError::Full)
    }

    pub fn release(&mut self, ip: IpAddr) {
        self.used.remove(&ip);
    }
}

pub struct PortAllocator {
    range: RangeInclusive<i32>,
    used: HashSet<i32>,
}

impl PortAllocator {
    pub fn new(range: RangeInclusive<i32>) -> Self {
        PortAllocator { range, used: HashSet::new() }
    }

    pub fn range(&self) -> String {
        format!("{}-{}", self.range.start(), self.range.end())
    }

    pub fn allocate(&mut self, port: i32) -> Result<(), AllocError> {
        if !self.range.contains(&port) {
            return Err(AllocError::OutOfRange(format!(
                "provided port is not in the valid range. The range of valid ports is {}",
                self.range()
            )));
        }
        if !self.used.insert(port) {
            return Err(AllocError::Taken);
        }
        Ok(())
    }

    pub fn allocate_next(&mut self) -> Result<i32, AllocError> {
        let size = (self.range.end() - self.range.start() + 1) as u32;
        let start = rand::random::<u32>() % size;
        for i in 0..size {
            let p = self.range.start() + ((start + i) % size) as i32;
            if self.used.insert(p) {
                return Ok(p);
            }
        }
        Err(AllocError::Full)
    }

    pub fn release(&mut self, port: i32) {
        self.used.remove(&port);
    }
}

pub struct Allocators {
    pub ips: IpAllocator,
    pub ports: PortAllocator,
}

fn lock(a: &Mutex<Allocators>) -> MutexGuard<'_, Allocators> {
    // The sets stay consistent across a panic elsewhere (each change is one insert or remove).
    a.lock().unwrap_or_else(|e| e.into_inner())
}

/// The IPs and ports one write takes, and those it gives up. Dropped without [`commit`], it
/// releases what it took (the write failed, was a dry run, or changed nothing) and keeps what
/// the object had; committed, it keeps what it took and releases what the object gave up.
///
/// [`commit`]: Reservation::commit
#[must_use = "a reservation dropped without commit() releases what it holds"]
pub struct Reservation<'a> {
    alloc: &'a Mutex<Allocators>,
    new_ips: Vec<IpAddr>,
    new_ports: Vec<i32>,
    old_ips: Vec<IpAddr>,
    old_ports: Vec<i32>,
    committed: bool,
}

impl<'a> Reservation<'a> {
    pub fn new(alloc: &'a Mutex<Allocators>) -> Self {
        Reservation { alloc, new_ips: vec![], new_ports: vec![], old_ips: vec![], old_ports: vec![], committed: false }
    }

    pub fn ip(&mut self, ip: IpAddr) -> Result<(), AllocError> {
        lock(self.alloc).ips.allocate(ip)?;
        self.new_ips.push(ip);
        Ok(())
    }

    pub fn next_ip(&mut self) -> Result<IpAddr, AllocError> {
        let ip = lock(self.alloc).ips.allocate_next()?;
        self.new_ips.push(ip);
        Ok(ip)
    }

    pub fn port(&mut self, port: i32) -> Result<(), AllocError> {
        lock(self.alloc).ports.allocate(port)?;
        self.new_ports.push(port);
        Ok(())
    }

    pub fn next_port(&mut self) -> Result<i32, AllocError> {
        let port = lock(self.alloc).ports.allocate_next()?;
        self.new_ports.push(port);
        Ok(port)
    }

    /// An address the object holds now and no longer will once the write is kept.
    pub fn give_up_ip(&mut self, ip: IpAddr) {
        self.old_ips.push(ip);
    }

    pub fn give_up_port(&mut self, port: i32) {
        self.old_ports.push(port);
    }

    pub fn ip_range(&self) -> String {
        lock(self.alloc).ips.range()
    }

    pub fn port_range(&self) -> String {
        lock(self.alloc).ports.range()
    }

    /// The write was kept: what was taken stays taken, what was given up is free again.
    pub fn commit(mut self) {
        release(self.alloc, &self.old_ips, &self.old_ports);
        self.committed = true;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.committed {
            release(self.alloc, &self.new_ips, &self.new_ports);
        }
    }
}

/// Frees IPs and ports (of a deleted Service, or a reservation's).
pub fn release(alloc: &Mutex<Allocators>, ips: &[IpAddr], ports: &[i32]) {
    let mut a = lock(alloc);
    for ip in ips {
        a.ips.release(*ip);
    }
    for p in ports {
        a.ports.release(*p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ips_are_distinct_in_range_and_released() {
        let mut a = IpAllocator::new("10.96.0.0/28".parse().unwrap());
        assert_eq!(a.nth(1), Some("10.96.0.1".parse().unwrap()));
        a.allocate("10.96.0.1".parse().unwrap()).unwrap();
        assert_eq!(a.allocate("10.96.0.1".parse().unwrap()), Err(AllocError::Taken));
        assert!(matches!(a.allocate("10.97.0.1".parse().unwrap()), Err(AllocError::OutOfRange(_))));
        assert!(matches!(a.allocate("10.96.0.0".parse().unwrap()), Err(AllocError::OutOfRange(_))));
        assert!(matches!(a.allocate("10.96.0.15".parse().unwrap()), Err(AllocError::OutOfRange(_))));
        let mut got = HashSet::new();
        for _ in 0..13 {
            let ip = a.allocate_next().unwrap();
            assert!(got.insert(ip));
        }
        assert_eq!(a.allocate_next(), Err(AllocError::Full));
        a.release("10.96.0.7".parse().unwrap());
        assert_eq!(a.allocate_next(), Ok("10.96.0.7".parse().unwrap()));
    }

    #[test]
    fn dynamic_ips_avoid_the_static_band() {
        let mut a = IpAllocator::new("10.96.0.0/12".parse().unwrap());
        for _ in 0..1000 {
            let ip = a.allocate_next().unwrap();
            assert!(to_u128(ip) > to_u128("10.96.1.0".parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn ports() {
        let mut p = PortAllocator::new(30000..=30002);
        p.allocate(30001).unwrap();
        assert_eq!(p.allocate(30001), Err(AllocError::Taken));
        assert!(matches!(p.allocate(80), Err(AllocError::OutOfRange(_))));
        let a = p.allocate_next().unwrap();
        let b = p.allocate_next().unwrap();
        assert_ne!(a, b);
        assert_eq!(p.allocate_next(), Err(AllocError::Full));
    }

    fn allocators() -> Mutex<Allocators> {
        Mutex::new(Allocators {
            ips: IpAllocator::new("10.96.0.0/28".parse().unwrap()),
            ports: PortAllocator::new(30000..=30002),
        })
    }

    #[test]
    fn a_reservation_dropped_uncommitted_frees_what_it_took() {
        let a = allocators();
        let ip: IpAddr = "10.96.0.5".parse().unwrap();
        {
            let mut r = Reservation::new(&a);
            r.ip(ip).unwrap();
            r.port(30001).unwrap();
            r.give_up_port(30000);
            assert_eq!(a.lock().unwrap().ips.allocate(ip), Err(AllocError::Taken));
        }
        let mut a = a.into_inner().unwrap();
        a.ips.allocate(ip).unwrap();
        a.ports.allocate(30001).unwrap();
    }

    #[test]
    fn a_committed_reservation_keeps_what_it_took_and_frees_what_was_given_up() {
        let a = allocators();
        lock(&a).ports.allocate(30000).unwrap();
        let ip: IpAddr = "10.96.0.5".parse().unwrap();
        let mut r = Reservation::new(&a);
        r.ip(ip).unwrap();
        let port = r.next_port().unwrap();
        r.give_up_port(30000);
        r.commit();
        let mut a = a.into_inner().unwrap();
        assert_eq!(a.ips.allocate(ip), Err(AllocError::Taken));
        assert_eq!(a.ports.allocate(port), Err(AllocError::Taken));
        a.ports.allocate(30000).unwrap();
    }
}
