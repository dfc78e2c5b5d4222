//! The plumbing against the kernel, as root, inside namespaces these tests make
//! (`weft-nltest-PID-...`) and remove, also when an assertion fails.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::Command;

use ipnet::IpNet;
use weft_netlink::route::Route;
use weft_netlink::{Netlink, Vxlan, ns};

/// Named namespaces removed when dropped.
struct Namespaces(Vec<String>);

impl Namespaces {
    fn make(&mut self, tag: &str) -> PathBuf {
        let name = format!("weft-nltest-{}-{tag}", std::process::id());
        self.0.push(name.clone());
        ns::create(&name).expect("creating a namespace")
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = ns::delete(n);
        }
    }
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

#[test]
fn namespaces_are_made_listed_entered_and_removed() {
    let mut nss = Namespaces(vec![]);
    let a = nss.make("life");
    assert!(ns::is_netns(&a));
    // Idempotent: the same namespace again.
    let again = ns::create(a.file_name().unwrap().to_str().unwrap()).unwrap();
    assert_eq!(again, a);
    let prefix = format!("weft-nltest-{}-", std::process::id());
    assert!(ns::list(&prefix).contains(&format!("{prefix}life")));

    // A thread inside it sees only its own links: loopback, up.
    let links = ns::run_in(Some(&a), || std::fs::read_dir("/sys/class/net").map(|d| d.count())).unwrap();
    assert!(links.is_ok());
    let lo_up = ns::run_in(Some(&a), || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async { Netlink::here().unwrap().link("lo").await.unwrap().map(|l| l.up) })
    })
    .unwrap();
    assert_eq!(lo_up, Some(true));

    // Its sysctls are its own.
    ns::sysctl(Some(&a), "net.ipv4.ip_forward", "1").unwrap();
    let fwd = ns::run_in(Some(&a), || std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")).unwrap().unwrap();
    assert_eq!(fwd.trim(), "1");
    let fresh = ns::run_in_fresh(|| std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")).unwrap().unwrap();
    assert_eq!(fresh.trim(), "0");

    // A listener on a thread of its own, and a process started inside.
    let listener =
        ns::spawn_in(Some(&a), || std::net::TcpListener::bind("127.0.0.1:0").map(|l| l.local_addr())).unwrap();
    assert!(listener.join().unwrap().is_ok());
    let mut cmd = Command::new("cat");
    cmd.arg("/proc/self/net/dev");
    ns::command_in(&mut cmd, &a).unwrap();
    let out = cmd.output().unwrap();
    let dev = String::from_utf8_lossy(&out.stdout);
    assert!(dev.contains("lo:") && dev.lines().count() == 3, "{dev}");
    let name = a.file_name().unwrap().to_str().unwrap().to_string();
    let inode = std::fs::metadata(&a).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap();
    let mine = std::fs::metadata(ns::of_pid(std::process::id())).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    assert_ne!(mine.unwrap(), inode);
    assert!(!ns::pids_in(&a).contains(&(std::process::id() as i32)));

    ns::delete(&name).unwrap();
    assert!(!a.exists());
    ns::delete(&name).unwrap();
    let missing = ns::run_in(Some(&a), || ()).unwrap_err();
    assert!(missing.is_missing(), "{missing}");
}

#[test]
fn a_process_entering_a_pod_gets_its_namespace_hostname_and_resolv_conf() {
    let mut nss = Namespaces(vec![]);
    let pod = nss.make("pod");
    let dir = std::env::temp_dir().join(format!("weft-nltest-{}-pod", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let resolv = dir.join("resolv.conf");
    std::fs::write(&resolv, "nameserver 10.96.0.10\n").unwrap();
    let entry = ns::PodEntry {
        netns: pod.clone(),
        resolv_conf: Some(resolv),
        hostname: Some(format!("web-{}", "x".repeat(80))),
    };
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "hostname; cat /etc/resolv.conf; cat /proc/self/net/dev | wc -l"]);
    ns::command_in_pod(&mut cmd, &entry).unwrap();
    let out = cmd.output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], format!("web-{}", "x".repeat(59)), "cut to 63 bytes");
    assert_eq!(lines[1], "nameserver 10.96.0.10");
    assert_eq!(lines[2].trim(), "3", "only loopback");
    // This process kept its own hostname.
    assert_ne!(nix::unistd::gethostname().unwrap().to_string_lossy(), lines[0]);

    let gone = ns::PodEntry { netns: pod.with_file_name("weft-nltest-none"), resolv_conf: None, hostname: None };
    assert!(ns::command_in_pod(&mut Command::new("true"), &gone).unwrap_err().is_missing());
}

#[tokio::test]
async fn links_addresses_routes_and_neighbours() {
    let mut nss = Namespaces(vec![]);
    let a = nss.make("a");
    let b = nss.make("b");
    let na = Netlink::at(Some(&a)).unwrap();
    let nb = Netlink::at(Some(&b)).unwrap();

    // A bridge, made once; a second ensure finds it.
    let br = na.ensure_bridge("br0", Some(1400), false).await.unwrap();
    assert!(br.is_kind("bridge"));
    assert_eq!(na.ensure_bridge("br0", Some(1400), false).await.unwrap().index, br.index);
    assert_eq!(na.link("br0").await.unwrap().unwrap().mtu, 1400);

    // A veth pair across the two namespaces, one end a hairpin port of the bridge.
    let bf = std::fs::File::open(&b).unwrap();
    na.create_veth("port-b", "eth0", &bf, Some(1400)).await.unwrap();
    let again = na.create_veth("port-b", "eth0", &bf, Some(1400)).await.unwrap_err();
    assert!(again.is_exists(), "{again}");
    let port = na.must_link("port-b").await.unwrap();
    na.set_controller_up(port.index, br.index).await.unwrap();
    na.set_hairpin(port.index).await.unwrap();
    let port = na.link_by_index(port.index).await.unwrap().unwrap();
    assert_eq!(port.controller, Some(br.index));
    let eth0 = nb.must_link("eth0").await.unwrap();
    assert!(eth0.is_kind("veth") && !eth0.up);
    assert!(na.link("eth0").await.unwrap().is_none());
    nb.set_mtu(eth0.index, 1300).await.unwrap();
    nb.set_up(eth0.index).await.unwrap();
    let eth0 = nb.must_link("eth0").await.unwrap();
    assert!(eth0.up && eth0.mtu == 1300);

    // Addresses: added once, then reported as there.
    assert!(na.add_address(br.index, net("10.9.0.1/24")).await.unwrap());
    assert!(!na.add_address(br.index, net("10.9.0.1/24")).await.unwrap());
    assert!(nb.add_address(eth0.index, net("10.9.0.2/24")).await.unwrap());
    na.set_up(br.index).await.unwrap();
    let have = nb.addresses(eth0.index).await.unwrap();
    assert_eq!(have.iter().filter(|a| a.addr().is_ipv4()).collect::<Vec<_>>(), [&net("10.9.0.2/24")]);

    // Routes: added once, again is fine, listed.
    let gw = Some(IpAddr::V4(Ipv4Addr::new(10, 9, 0, 1)));
    nb.add_route(net("10.96.0.0/12"), gw, eth0.index).await.unwrap();
    nb.add_route(net("10.96.0.0/12"), gw, eth0.index).await.unwrap();
    let onlink = Route { onlink: true, ..Route::new(net("10.244.5.0/24"), Some([10, 244, 5, 0].into()), eth0.index) };
    nb.ensure_route(&onlink).await.unwrap();
    let routes = nb.routes().await.unwrap();
    assert!(routes.contains(&(net("10.96.0.0/12"), gw, Some(eth0.index))), "{routes:?}");
    assert!(routes.contains(&(net("10.244.5.0/24"), Some([10, 244, 5, 0].into()), Some(eth0.index))));
    // A gateway off every link's addresses needs onlink: the kernel's refusal keeps its errno.
    let off = nb.add_route(net("10.245.0.0/16"), Some([192, 0, 2, 1].into()), eth0.index).await.unwrap_err();
    assert_eq!(off.errno_value(), Some(nix::errno::Errno::ENETUNREACH), "{off}");

    // A VXLAN device with neighbour and FDB entries.
    let vx = Vxlan {
        name: "vx0".into(),
        vni: 1,
        dev: eth0.index,
        local: Ipv4Addr::new(10, 9, 0, 2),
        port: 8472,
        mtu: 1250,
        mac: [0x0a, 0x58, 0xfe, 0, 0, 2],
    };
    nb.create_vxlan(&vx).await.unwrap();
    assert!(nb.create_vxlan(&vx).await.unwrap_err().is_exists());
    let v = nb.must_link("vx0").await.unwrap();
    assert!(v.is_kind("vxlan"));
    assert_eq!((v.mtu, v.mac.as_str()), (1250, "0a:58:fe:00:00:02"));
    nb.set_up(v.index).await.unwrap();
    let peer_mac = [0x0a, 0x58, 0xfe, 0, 0, 3];
    nb.set_neighbour(v.index, [10, 244, 7, 0].into(), peer_mac).await.unwrap();
    nb.set_neighbour(v.index, [10, 244, 7, 0].into(), peer_mac).await.unwrap();
    nb.set_fdb(v.index, peer_mac, [10, 9, 0, 3].into()).await.unwrap();
    nb.set_fdb(v.index, peer_mac, [10, 9, 0, 3].into()).await.unwrap();
    let mut ip = Command::new("ip");
    ip.args(["neigh", "show", "dev", "vx0"]);
    ns::command_in(&mut ip, &b).unwrap();
    let neigh = String::from_utf8_lossy(&ip.output().unwrap().stdout).to_string();
    assert!(neigh.contains("10.244.7.0 lladdr 0a:58:fe:00:00:03 PERMANENT"), "{neigh}");
    let mut fdb = Command::new("bridge");
    fdb.args(["fdb", "show", "dev", "vx0"]);
    ns::command_in(&mut fdb, &b).unwrap();
    let fdb = String::from_utf8_lossy(&fdb.output().unwrap().stdout).to_string();
    assert!(fdb.contains("0a:58:fe:00:00:03 dst 10.9.0.3 self permanent"), "{fdb}");

    // Deleting: addresses and links, twice is fine.
    na.del_address(br.index, net("10.9.0.1/24")).await.unwrap();
    na.del_address(br.index, net("10.9.0.1/24")).await.unwrap();
    assert!(!na.addresses(br.index).await.unwrap().contains(&net("10.9.0.1/24")));
    na.del_link(port.index).await.unwrap();
    na.del_link(port.index).await.unwrap();
    assert!(nb.link("eth0").await.unwrap().is_none(), "the peer goes with it");

    // A link moved into another namespace.
    na.create_veth("mv0", "mv1", &std::fs::File::open(&a).unwrap(), None).await.unwrap();
    let mv = na.must_link("mv0").await.unwrap();
    na.set_netns(mv.index, &bf).await.unwrap();
    assert!(na.link("mv0").await.unwrap().is_none());
    assert!(nb.link("mv0").await.unwrap().is_some());
    assert!(na.must_link("mv0").await.unwrap_err().is_missing());
}
