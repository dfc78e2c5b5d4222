//! The nf_tables codec against the kernel, in a network namespace this test makes and removes:
//! what it builds is what `nft` (an independent witness) lists, a refusal names the operation
//! and keeps errno, and real packets meet the rules.

use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::time::Duration;

use weft_netlink::nft::*;

mod common;
use common::Ns;

/// A namespace with loopback up and a veth pair, `d0` holding 10.96.0.254/24.
fn veth_ns(tag: &str) -> Ns {
    let ns = Ns::new(tag);
    for args in [
        &["link", "set", "lo", "up"][..],
        &["link", "add", "d0", "type", "veth", "peer", "name", "d1"],
        &["addr", "add", "10.96.0.254/24", "dev", "d0"],
        &["link", "set", "d0", "up"],
        &["link", "set", "d1", "up"],
    ] {
        ns.ip(args);
    }
    ns
}

const T: &str = "weft-codec";
const F: Family = Family::Ip;
/// The backend behind the Service address 10.96.0.1 (on the namespace's veth).
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 254);

fn rule(chain: &str, exprs: Vec<Expr>) -> Rule {
    Rule { chain: chain.into(), exprs }
}

/// `ip daddr . meta l4proto . th dport` into slots 0, 1, 2.
fn vip_proto_port() -> Vec<Expr> {
    vec![
        Expr::Payload { base: PayloadBase::Network, offset: 16, len: 4, dreg: Reg::slot(0) },
        Expr::Meta { key: MetaKey::L4Proto, dreg: Reg::slot(1) },
        Expr::Payload { base: PayloadBase::Transport, offset: 2, len: 2, dreg: Reg::slot(2) },
    ]
}

fn table(b: &mut Batch) {
    use FieldType as Ft;
    b.add_table(&Table { comment: Some("made by the codec test".into()), ..Table::new(F, T) });
    b.add_set(F, T, &Set::plain("refused", &[Ft::IPV4, Ft::PROTO, Ft::PORT]));
    b.add_set(F, T, &Set::map("dispatch", &[Ft::IPV4, Ft::PROTO, Ft::PORT], SetData::Verdict));
    b.add_set(
        F,
        T,
        &Set {
            typeof_key: vec![Typeof::IpDaddr, Typeof::L4Proto, Typeof::Dport(6), Typeof::NumgenRandom { modulus: 2 }],
            typeof_data: vec![Typeof::IpDaddr, Typeof::Dport(6)],
            ..Set::map("backends", &[Ft::IPV4, Ft::PROTO, Ft::PORT, Ft::U32], SetData::Value(vec![Ft::IPV4, Ft::PORT]))
        },
    );
    b.add_set(F, T, &Set { interval: true, ..Set::plain("allow", &[Ft::IPV4, Ft::PROTO, Ft::PORT, Ft::IPV4]) });
    b.add_chain(F, T, &Chain::regular("mark"));
    b.add_chain(F, T, &Chain::regular("pick"));
    b.add_chain(F, T, &Chain::base("out", ChainType::Filter, Hook::Output, -110));
    b.add_chain(F, T, &Chain::base("nat-out", ChainType::Nat, Hook::Output, priority::DSTNAT));
    b.add_chain(F, T, &Chain::base("post", ChainType::Nat, Hook::Postrouting, priority::SRCNAT));
    // meta mark set meta mark | 0x4000
    b.add_rule(
        F,
        T,
        &rule(
            "mark",
            vec![
                Expr::Meta { key: MetaKey::Mark, dreg: Reg::slot(0) },
                Expr::Bitwise {
                    sreg: Reg::slot(0),
                    dreg: Reg::slot(0),
                    mask: (!0x4000u32).to_ne_bytes().to_vec(),
                    xor: 0x4000u32.to_ne_bytes().to_vec(),
                },
                Expr::MetaSet { key: MetaKey::Mark, sreg: Reg::slot(0) },
            ],
        ),
    );
    // meta l4proto tcp dnat ip to ip daddr . meta l4proto . tcp dport . numgen random mod 2 map @backends
    let mut pick = vec![
        Expr::Meta { key: MetaKey::L4Proto, dreg: Reg::slot(0) },
        Expr::Cmp { sreg: Reg::slot(0), op: CmpOp::Eq, data: vec![6] },
    ];
    pick.extend(vip_proto_port());
    pick.push(Expr::Numgen { dreg: Reg::slot(3), modulus: 2, random: true, offset: 0 });
    pick.push(Expr::Lookup { set: "backends".into(), sreg: Reg::slot(0), dreg: Some(Reg::slot(0)), invert: false });
    pick.push(Expr::Nat { kind: NatKind::Dnat, family: F, addr: Some(Reg::slot(0)), proto: Some(Reg::slot(1)) });
    b.add_rule(F, T, &rule("pick", pick));
    // ip daddr . meta l4proto . th dport vmap @dispatch
    let mut vmap = vip_proto_port();
    vmap.push(Expr::Lookup { set: "dispatch".into(), sreg: Reg::slot(0), dreg: Some(Reg::VERDICT), invert: false });
    b.add_rule(F, T, &rule("nat-out", vmap));
    // ip daddr . meta l4proto . th dport @refused counter meta l4proto tcp reject with tcp reset
    let mut reset = vip_proto_port();
    reset.push(Expr::Lookup { set: "refused".into(), sreg: Reg::slot(0), dreg: None, invert: false });
    reset.push(Expr::Counter);
    reset.push(Expr::Meta { key: MetaKey::L4Proto, dreg: Reg::slot(0) });
    reset.push(Expr::Cmp { sreg: Reg::slot(0), op: CmpOp::Eq, data: vec![6] });
    reset.push(Expr::Reject(Reject::TcpReset));
    b.add_rule(F, T, &rule("out", reset));
    // ... . ip saddr != @allow drop (an interval concatenation)
    let mut guard = vip_proto_port();
    guard.push(Expr::Payload { base: PayloadBase::Network, offset: 12, len: 4, dreg: Reg::slot(3) });
    guard.push(Expr::Lookup { set: "allow".into(), sreg: Reg::slot(0), dreg: None, invert: true });
    guard.push(Expr::Verdict(Verdict::Drop));
    // Only for 127.0.0.9 (nothing else is guarded in this test).
    guard.insert(0, Expr::Cmp { sreg: Reg::slot(0), op: CmpOp::Eq, data: vec![127, 0, 0, 9] });
    guard.insert(0, Expr::Payload { base: PayloadBase::Network, offset: 16, len: 4, dreg: Reg::slot(0) });
    b.add_rule(F, T, &rule("out", guard));
    // fib daddr type local ct state new counter
    b.add_rule(
        F,
        T,
        &rule(
            "out",
            vec![
                Expr::Fib { flags: fib_flags::DADDR, result: FibResult::AddrType, dreg: Reg::slot(0) },
                Expr::cmp_u32(Reg::slot(0), CmpOp::Eq, addr_type::LOCAL),
                Expr::Ct { key: CtKey::State, dreg: Reg::slot(0) },
                Expr::Bitwise {
                    sreg: Reg::slot(0),
                    dreg: Reg::slot(0),
                    mask: ct_state::NEW.to_ne_bytes().to_vec(),
                    xor: vec![0; 4],
                },
                Expr::cmp_u32(Reg::slot(0), CmpOp::Neq, 0),
                Expr::Counter,
            ],
        ),
    );
    // meta mark & 0x4000 == 0x4000 masquerade; jhash ip saddr mod 4 seed 0x5eed == 9 (never) return
    b.add_rule(
        F,
        T,
        &rule(
            "post",
            vec![
                Expr::Meta { key: MetaKey::Mark, dreg: Reg::slot(0) },
                Expr::Bitwise {
                    sreg: Reg::slot(0),
                    dreg: Reg::slot(0),
                    mask: 0x4000u32.to_ne_bytes().to_vec(),
                    xor: vec![0; 4],
                },
                Expr::cmp_u32(Reg::slot(0), CmpOp::Eq, 0x4000),
                Expr::Masquerade,
            ],
        ),
    );
    b.add_rule(
        F,
        T,
        &rule(
            "post",
            vec![
                Expr::Payload { base: PayloadBase::Network, offset: 12, len: 4, dreg: Reg::slot(7) },
                Expr::Jhash { sreg: Reg::slot(7), dreg: Reg::slot(2), len: 4, modulus: 4, seed: 0x5eed, offset: 0 },
                Expr::cmp_u32(Reg::slot(2), CmpOp::Eq, 9),
                Expr::Verdict(Verdict::Return),
            ],
        ),
    );
    // In a chain no hook reaches: marked packets would be masqueraded on loopback.
    b.add_chain(F, T, &Chain::regular("idle"));
    b.add_rule(F, T, &rule("idle", vec![Expr::Verdict(Verdict::Jump("mark".into()))]));
}

fn vip_key(ip: [u8; 4], port: u16) -> Key {
    Key::new().ipv4(Ipv4Addr::from(ip)).proto(6).port(port)
}

#[test]
fn a_table_built_through_netlink_is_what_nft_lists_and_packets_meet_it() {
    let ns = veth_ns("codec");
    let mut b = Batch::new();
    table(&mut b);
    let listener_port = 7001;
    b.add_elements(F, T, "refused", &[Elem::key(vip_key([127, 0, 0, 1], listener_port).bytes())]);
    b.add_elements(
        F,
        T,
        "dispatch",
        &[Elem {
            data: Some(ElemData::Verdict(Verdict::Goto("pick".into()))),
            ..Elem::key(vip_key([10, 96, 0, 1], 80).bytes())
        }],
    );
    let be = |slot, port| Elem {
        data: Some(ElemData::Value(Key::new().ipv4(BACKEND).port(port).bytes())),
        ..Elem::key(vip_key([10, 96, 0, 1], 80).host_u32(slot).bytes())
    };
    b.add_elements(F, T, "backends", &[be(0, 7002), be(1, 7002)]);
    b.add_elements(
        F,
        T,
        "allow",
        &[Elem {
            key: vip_key([127, 0, 0, 9], 7003).ipv4(Ipv4Addr::new(127, 0, 0, 0)).bytes(),
            key_end: Some(vip_key([127, 0, 0, 9], 7003).ipv4(Ipv4Addr::new(127, 0, 0, 7)).bytes()),
            data: None,
        }],
    );
    b.commit_in(Some(&ns.path())).unwrap();
    assert!(table_exists(Some(&ns.path()), F, T).unwrap());
    assert!(!table_exists(Some(&ns.path()), F, "nope").unwrap());
    assert_eq!(list_tables(Some(&ns.path()), F).unwrap(), [T]);

    let listed = ns.nft(&["list", "table", "ip", T]);
    for want in [
        "comment \"made by the codec test\"",
        "type ipv4_addr . inet_proto . inet_service : verdict",
        "10.96.0.1 . tcp . 80 : goto pick",
        "10.96.0.1 . tcp . 80 . 0 : 10.96.0.254 . 7002",
        "flags interval",
        "127.0.0.9 . tcp . 7003 . 127.0.0.0/29",
        "type filter hook output priority -110; policy accept;",
        "type nat hook output priority -100; policy accept;",
        "type nat hook postrouting priority srcnat; policy accept;",
        "meta mark set meta mark | 0x00004000",
        // nft leaves out `meta l4proto tcp` where the next expression implies it.
        "dnat ip to ip daddr . meta l4proto . tcp dport . numgen random mod 2 map @backends",
        "ip daddr . meta l4proto . th dport vmap @dispatch",
        "ip daddr . meta l4proto . th dport @refused counter packets 0 bytes 0 reject with tcp reset",
        "ip daddr . meta l4proto . th dport . ip saddr != @allow drop",
        "fib daddr type local ct state new counter",
        "meta mark & 0x00004000 == 0x00004000 masquerade",
        "jhash ip saddr mod 4 seed 0x5eed 9 return",
        "jump mark",
    ] {
        assert!(listed.contains(want), "missing {want:?} in\n{listed}");
    }

    // Real packets, inside the namespace: a listener on a refused port is reset by the rule; a
    // connection to the Service address is DNATed to the backend; an allowed source passes the
    // guard.
    let path = ns.path();
    let (refused, dnat, guarded) = weft_netlink::ns::run_in(Some(&path), move || {
        let _l1 = TcpListener::bind(("127.0.0.1", listener_port)).unwrap();
        let _l2 = TcpListener::bind((BACKEND, 7002)).unwrap();
        let _l3 = TcpListener::bind(("127.0.0.9", 7003)).unwrap();
        let connect = |to: &str| TcpStream::connect_timeout(&to.parse().unwrap(), Duration::from_secs(2));
        let refused = connect("127.0.0.1:7001").map_err(|e| e.kind());
        let dnat = connect("10.96.0.1:80").map(|s| s.peer_addr().unwrap().port()).map_err(|e| e.to_string());
        // From 127.0.0.1 (allowed) to the guarded 127.0.0.9:7003.
        let guarded = connect("127.0.0.9:7003").is_ok();
        (refused, dnat, guarded)
    })
    .unwrap();
    assert_eq!(refused.unwrap_err(), std::io::ErrorKind::ConnectionRefused, "the reset rule answers, not the listener");
    assert!(dnat.is_ok(), "10.96.0.1:80 reaches the backend through the map: {dnat:?}");
    assert!(guarded, "an allowed source passes the guard");
    assert!(
        ns.nft(&["list", "chain", "ip", T, "out"]).contains("counter packets 1"),
        "the refused connection was counted"
    );

    // Deleting elements (an interval one by key and end) and flushing.
    let mut b = Batch::new();
    b.delete_elements(
        F,
        T,
        "allow",
        &[Elem {
            key: vip_key([127, 0, 0, 9], 7003).ipv4(Ipv4Addr::new(127, 0, 0, 0)).bytes(),
            key_end: Some(vip_key([127, 0, 0, 9], 7003).ipv4(Ipv4Addr::new(127, 0, 0, 7)).bytes()),
            data: None,
        }],
    );
    b.delete_elements(F, T, "refused", &[Elem::key(vip_key([127, 0, 0, 1], listener_port).bytes())]);
    b.flush_set(F, T, "backends");
    b.flush_chain(F, T, "post");
    b.commit_in(Some(&path)).unwrap();
    let listed = ns.nft(&["list", "table", "ip", T]);
    assert!(!listed.contains("127.0.0.9 . tcp") && !listed.contains("127.0.0.1 . tcp . 7001"), "{listed}");
    assert!(!listed.contains("7002") && !listed.contains("masquerade"), "{listed}");
    let ok = weft_netlink::ns::run_in(Some(&path), move || {
        let _l = TcpListener::bind(("127.0.0.1", 7001)).unwrap();
        TcpStream::connect_timeout(&"127.0.0.1:7001".parse().unwrap(), Duration::from_secs(2)).is_ok()
    })
    .unwrap();
    assert!(ok, "with its element gone the port is no longer refused");
}

#[test]
fn a_refused_batch_changes_nothing_and_names_the_operation() {
    let ns = veth_ns("refuse");
    let mut b = Batch::new();
    table(&mut b);
    b.commit_in(Some(&ns.path())).unwrap();
    let before = ns.nft(&["list", "ruleset"]);
    let mut b = Batch::new();
    b.add_elements(F, T, "refused", &[Elem::key(vip_key([10, 0, 0, 1], 1).bytes())]);
    b.add_rule(F, T, &rule("no-such-chain", vec![Expr::Counter]));
    b.add_elements(F, T, "refused", &[Elem::key(vip_key([10, 0, 0, 2], 2).bytes())]);
    let e = b.commit_in(Some(&ns.path())).unwrap_err();
    assert!(e.is_missing(), "ENOENT kept: {e}");
    assert!(e.to_string().contains("add rule ip weft-codec no-such-chain"), "{e}");
    assert!(e.to_string().contains("message 2 of 3"), "{e}");
    assert_eq!(ns.nft(&["list", "ruleset"]), before, "nothing of the batch went in");
    // Replacing a table in one transaction: add, delete, add again with different content.
    let mut b = Batch::new();
    b.add_table(&Table::new(F, T));
    b.delete_table(F, T);
    b.add_table(&Table::new(F, T));
    b.add_chain(F, T, &Chain::regular("only"));
    b.commit_in(Some(&ns.path())).unwrap();
    let after = ns.nft(&["list", "table", "ip", T]);
    assert!(after.contains("chain only") && !after.contains("chain out"), "{after}");
    // A missing table is reported missing; deleting one that is there works.
    let mut b = Batch::new();
    b.delete_table(F, "absent");
    assert!(b.commit_in(Some(&ns.path())).unwrap_err().is_missing());
    let _ = UdpSocket::bind("127.0.0.1:0");
    let p: &Path = &ns.path();
    let mut b = Batch::new();
    b.delete_table(F, T);
    b.commit_in(Some(p)).unwrap();
    assert!(list_tables(Some(p), F).unwrap().is_empty());
}
