//! NFLOG against the kernel, as root, in a namespace this test makes (`weft-nflog-PID`) and
//! removes, also when an assertion fails: an nf_tables `log group` rule built with the codec
//! copies a UDP datagram sent to loopback, and the subscriber reads it back with its prefix,
//! addresses and ports; a second listener for the same group is refused with a clear error.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use weft_netlink::nflog::{self, Subscriber};
use weft_netlink::nft::*;
use weft_netlink::ns;

struct Namespace(String);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = ns::delete(&self.0);
    }
}

const GROUP: u16 = 7;
const T: &str = "weft-nflog-test";

#[test]
fn a_logged_datagram_is_received_with_its_prefix_addresses_and_ports() {
    let name = Namespace(format!("weft-nflog-{}", std::process::id()));
    let path = ns::create(&name.0).expect("creating a namespace");
    let got = ns::run_in(Some(&path), || -> Result<_, String> {
        let mut sub = Subscriber::bind(GROUP, 96).map_err(|e| e.to_string())?;
        // A second listener for the group in the same namespace is refused, and says why.
        let taken = Subscriber::bind(GROUP, 96).err().map(|e| e.to_string());
        // output: UDP to port 9999 is logged to the group with a prefix.
        let mut b = Batch::new();
        b.add_table(&Table::new(Family::Ip, T));
        b.add_chain(Family::Ip, T, &Chain::base("out", ChainType::Filter, Hook::Output, priority::FILTER));
        b.add_rule(
            Family::Ip,
            T,
            &Rule {
                chain: "out".into(),
                exprs: vec![
                    Expr::Meta { key: MetaKey::L4Proto, dreg: Reg::slot(0) },
                    Expr::Cmp { sreg: Reg::slot(0), op: CmpOp::Eq, data: vec![17] },
                    Expr::Payload { base: PayloadBase::Transport, offset: 2, len: 2, dreg: Reg::slot(0) },
                    Expr::Cmp { sreg: Reg::slot(0), op: CmpOp::Eq, data: 9999u16.to_be_bytes().to_vec() },
                    Expr::Log { group: Some(GROUP), prefix: Some("in-0123456789abcdef".into()) },
                ],
            },
        );
        b.commit_in(None).map_err(|e| e.to_string())?;
        let to = SocketAddr::from((Ipv4Addr::LOCALHOST, 9999));
        let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| e.to_string())?;
        let from = s.local_addr().map_err(|e| e.to_string())?.port();
        s.send_to(b"hello, nflog", to).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(p) = sub.recv(Duration::from_millis(500)).map_err(|e| e.to_string())?.into_iter().next() {
                return Ok((p, from, taken));
            }
        }
        Err("nothing was logged within 5 s".into())
    })
    .expect("working in the namespace");
    let (p, from, taken) = got.unwrap();
    assert_eq!(p.prefix, "in-0123456789abcdef");
    assert_eq!(p.group, GROUP);
    assert_eq!(p.family, 2, "an ip table logs as AF_INET");
    assert!(p.packet.len() <= 96, "the copy range holds: {} bytes", p.packet.len());
    let h = nflog::ipv4(&p.packet).expect("an IPv4 header");
    assert_eq!((h.src, h.dst), (Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST));
    assert_eq!((h.protocol, h.src_port, h.dst_port), (nflog::UDP, Some(from), Some(9999)));
    assert!(p.packet.ends_with(b"hello, nflog"), "the payload is copied");
    let taken = taken.expect("a second bind of the group is refused");
    assert!(taken.contains("another listener"), "{taken}");
}
