//! One-field interval sets, `limit`, `log group` and `ct direction` against the kernel, in a
//! namespace this test makes and removes: `nft` (an independent witness) lists what the codec
//! built as it would have written it.

use std::net::Ipv4Addr;

use weft_netlink::nft::*;

mod common;
use common::Ns;

const T: &str = "weft-codec";
const F: Family = Family::Ip;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

#[test]
fn interval_sets_limit_log_and_ct_direction_are_what_nft_lists() {
    let ns = Ns::new("iv");
    let mut b = Batch::new();
    b.add_table(&Table::new(F, T));
    b.add_set(F, T, &Set { interval: true, ..Set::plain("cidrs", &[FieldType::IPV4]) });
    b.add_intervals(
        F,
        T,
        "cidrs",
        &[
            Interval::ipv4(ip("10.0.0.0"), ip("10.255.255.255")),
            Interval::ipv4(ip("192.168.1.5"), ip("192.168.1.5")),
            Interval::ipv4(ip("192.168.1.7"), ip("192.168.1.9")),
            // Adjacent to the one before: an end and a start on one key.
            Interval::ipv4(ip("192.168.1.10"), ip("192.168.1.10")),
            Interval::ipv4(ip("224.0.0.0"), Ipv4Addr::BROADCAST),
        ],
    );
    b.add_chain(F, T, &Chain::regular("c"));
    let saddr = Expr::Payload { base: PayloadBase::Network, offset: 12, len: 4, dreg: Reg::slot(0) };
    b.add_rule(
        F,
        T,
        &Rule {
            chain: "c".into(),
            exprs: vec![
                Expr::Ct { key: CtKey::Direction, dreg: Reg::slot(0) },
                Expr::Cmp { sreg: Reg::slot(0), op: CmpOp::Eq, data: vec![1] },
                Expr::Verdict(Verdict::Accept),
            ],
        },
    );
    b.add_rule(
        F,
        T,
        &Rule {
            chain: "c".into(),
            exprs: vec![
                saddr,
                Expr::Lookup { set: "cidrs".into(), sreg: Reg::slot(0), dreg: None, invert: false },
                Expr::Verdict(Verdict::Return),
            ],
        },
    );
    b.add_rule(
        F,
        T,
        &Rule {
            chain: "c".into(),
            exprs: vec![
                Expr::Limit { rate: 10, unit_seconds: 1, burst: 20, bytes: false, invert: false },
                Expr::Log { group: Some(13), prefix: Some("in-abc".into()) },
            ],
        },
    );
    b.commit_in(Some(&ns.path())).unwrap();
    let set = ns.nft(&["list", "set", "ip", T, "cidrs"]);
    let flat: String = set.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains(
            "elements = { 10.0.0.0/8, 192.168.1.5, 192.168.1.7-192.168.1.9, 192.168.1.10, 224.0.0.0-255.255.255.255 }"
        ) || flat
            .contains("elements = { 10.0.0.0/8, 192.168.1.5, 192.168.1.7-192.168.1.9, 192.168.1.10, 224.0.0.0/3 }"),
        "{set}"
    );
    let chain = ns.nft(&["list", "chain", "ip", T, "c"]);
    assert!(chain.contains("ct direction reply accept"), "{chain}");
    assert!(chain.contains("ip saddr @cidrs return"), "{chain}");
    assert!(chain.contains("limit rate 10/second burst 20 packets log prefix \"in-abc\" group 13"), "{chain}");

    // Ranges go exactly as they came; a range can be replaced by a wider one in one batch.
    let mut b = Batch::new();
    b.delete_intervals(F, T, "cidrs", &[Interval::ipv4(ip("192.168.1.7"), ip("192.168.1.9"))]);
    b.delete_intervals(F, T, "cidrs", &[Interval::ipv4(ip("224.0.0.0"), Ipv4Addr::BROADCAST)]);
    b.delete_intervals(F, T, "cidrs", &[Interval::ipv4(ip("192.168.1.5"), ip("192.168.1.5"))]);
    b.add_intervals(F, T, "cidrs", &[Interval::ipv4(ip("192.168.1.5"), ip("192.168.1.6"))]);
    b.commit_in(Some(&ns.path())).unwrap();
    let flat: String = ns.nft(&["list", "set", "ip", T, "cidrs"]).split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(flat.contains("elements = { 10.0.0.0/8, 192.168.1.5-192.168.1.6, 192.168.1.10 }"), "{flat}");
    // Deleting a range that is not there is refused, and names the operation.
    let mut b = Batch::new();
    b.delete_intervals(F, T, "cidrs", &[Interval::ipv4(ip("172.16.0.0"), ip("172.16.0.9"))]);
    let e = b.commit_in(Some(&ns.path())).unwrap_err();
    assert!(e.to_string().contains("delete 1 elements of ip weft-codec cidrs"), "{e}");
}
