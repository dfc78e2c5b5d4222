//! A deleted namespace really goes: nothing weft-netlink made inside it keeps it alive. Its own
//! test binary, so that this is the process's first namespace work (tokio's process-wide sockets
//! are made then: see `ns::settle_process_globals`).

use std::time::{Duration, Instant};

use weft_netlink::{Netlink, ns};

fn link_exists(netns: &std::path::Path, name: &'static str) -> bool {
    ns::run_in(Some(netns), move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
        rt.block_on(async { Netlink::here().unwrap().link(name).await.unwrap().is_some() })
    })
    .unwrap()
}

#[test]
fn a_deleted_namespace_takes_its_links_with_it() {
    let pid = std::process::id();
    let (a, b) = (format!("weft-nllife-{pid}-a"), format!("weft-nllife-{pid}-b"));
    let (pa, pb) = (ns::create(&a).unwrap(), ns::create(&b).unwrap());
    let file_b = std::fs::File::open(&pb).unwrap();
    // A veth from `a` to `b`: when `a` is freed, the kernel removes the pair, so `b` loses its end.
    ns::run_in(Some(&pa), move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
        rt.block_on(async { Netlink::here().unwrap().create_veth("life-a", "life-b", &file_b, None).await })
    })
    .unwrap()
    .unwrap();
    assert!(link_exists(&pb, "life-b"));
    ns::delete(&a).unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    let mut gone = false;
    while Instant::now() < until {
        if !link_exists(&pb, "life-b") {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = ns::delete(&b);
    assert!(gone, "the veth's end in b outlived namespace a: something still holds a");
}
