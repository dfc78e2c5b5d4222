//! `weft policy denials`: the connections NetworkPolicies denied, read from the `PolicyDenied`
//! Events the policy engine records (one per source, destination, protocol, port and direction,
//! its count growing), as a table.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;
use weft_policy::denials::{ANNOTATION, REASON};

use crate::cli::DenialsArgs;
use crate::{client, lab, output};

/// `30s`, `5m`, `1h30m`, `2d`, or a number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let t = s.trim();
    if let Ok(n) = t.parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    let mut total = 0u64;
    let mut num = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => bail!("{s:?} is not a duration (like 30s, 5m, 1h30m)"),
        };
        let n: u64 = num.parse().with_context(|| format!("{s:?} is not a duration (like 30s, 5m, 1h30m)"))?;
        total = total.saturating_add(n.saturating_mul(unit));
        num.clear();
    }
    if !num.is_empty() || t.is_empty() {
        bail!("{s:?} is not a duration (like 30s, 5m, 1h30m)");
    }
    Ok(Duration::from_secs(total))
}

/// The table's rows (headers first) for `events`, oldest first; those last seen before `since`
/// ago are left out, and Events without weft's record of the denial too.
pub fn rows(events: &[Event], now: Timestamp, since: Option<Duration>) -> Vec<Vec<String>> {
    let mut found: Vec<(i64, Vec<String>)> = vec![];
    for e in events {
        if e.reason.as_deref() != Some(REASON) {
            continue;
        }
        let Some(rec) = e
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION))
            .and_then(|r| serde_json::from_str::<Value>(r).ok())
        else {
            continue;
        };
        let last = e.last_timestamp.as_ref().or(e.first_timestamp.as_ref()).map(|t| t.0).or(e
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0));
        let age = last.map(|t| now.as_second() - t.as_second());
        if let (Some(since), Some(age)) = (since, age)
            && age > since.as_secs() as i64
        {
            continue;
        }
        let s = |k: &str| rec.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
        let end = |pod: &str, addr: &str| if s(pod).is_empty() { s(addr) } else { s(pod) };
        let port = match rec.get("port").and_then(|p| p.as_u64()) {
            Some(p) => format!("{}/{p}", s("protocol")),
            None => s("protocol"),
        };
        let policies: Vec<&str> =
            rec.get("policies").and_then(|p| p.as_array()).into_iter().flatten().filter_map(|p| p.as_str()).collect();
        found.push((
            last.map(|t| t.as_second()).unwrap_or(0),
            vec![
                age.map(weft_api::table::human_duration).unwrap_or_else(|| "<unknown>".into()),
                s("direction"),
                end("sourcePod", "source"),
                end("destinationPod", "destination"),
                port,
                e.count.unwrap_or(1).to_string(),
                if policies.is_empty() { "<unknown>".into() } else { policies.join(",") },
            ],
        ));
    }
    found.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    let head = ["LAST SEEN", "DIRECTION", "SOURCE", "DESTINATION", "PROTO/PORT", "COUNT", "POLICIES"];
    std::iter::once(head.map(String::from).to_vec()).chain(found.into_iter().map(|(_, r)| r)).collect()
}

pub async fn denials(name: Option<String>, a: DenialsArgs) -> Result<ExitCode> {
    let since = a.since.as_deref().map(parse_duration).transpose()?;
    let lab = lab::select(name.as_deref())?;
    let c = client::connect(&lab).await?;
    let ns = a.namespace.unwrap_or_else(|| "default".into());
    let api: kube::Api<Event> = if a.all_namespaces { kube::Api::all(c) } else { kube::Api::namespaced(c, &ns) };
    let lp = kube::api::ListParams::default().fields(&format!("reason={REASON}"));
    let events = match api.list(&lp).await {
        Ok(l) => l.items,
        Err(e) => {
            eprintln!("{}", client::describe_error(&e));
            return Ok(ExitCode::FAILURE);
        }
    };
    let table = rows(&events, Timestamp::now(), since);
    if table.len() == 1 {
        if a.all_namespaces {
            eprintln!("No denials found.");
        } else {
            eprintln!("No denials found in {ns} namespace.");
        }
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", output::aligned(table));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172800));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        for bad in ["", "m", "5x", "1h30", "-5s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    fn event(last: &str, count: i32, rec: Value) -> Event {
        serde_json::from_value(json!({
            "metadata": {"name": "b.1", "namespace": "x", "annotations": {ANNOTATION: rec.to_string()}},
            "involvedObject": {"kind": "Pod", "namespace": "x", "name": "b"},
            "reason": REASON, "type": "Warning", "count": count,
            "firstTimestamp": "2025-01-01T00:00:00Z", "lastTimestamp": last,
        }))
        .unwrap()
    }

    #[test]
    fn rows_name_pods_or_addresses_and_leave_out_what_is_older_than_since() {
        let now: Timestamp = "2025-01-01T00:10:00Z".parse().unwrap();
        let events = vec![
            event(
                "2025-01-01T00:09:55Z",
                12,
                json!({"direction": "ingress", "source": "10.244.1.5", "sourcePod": "x/a", "destination": "10.244.2.7",
                       "destinationPod": "x/b", "protocol": "TCP", "port": 80, "policies": ["x/deny-all", "x/allow-a"]}),
            ),
            event(
                "2025-01-01T00:01:00Z",
                1,
                json!({"direction": "egress", "source": "10.244.2.7", "sourcePod": "x/b", "destination": "8.8.8.8",
                       "destinationPod": null, "protocol": "ICMP", "port": null, "policies": ["x/deny-all"]}),
            ),
        ];
        let r = rows(&events, now, None);
        assert_eq!(r.len(), 3);
        assert_eq!(r[1], ["9m", "egress", "x/b", "8.8.8.8", "ICMP", "1", "x/deny-all"]);
        assert_eq!(r[2], ["5s", "ingress", "x/a", "x/b", "TCP/80", "12", "x/deny-all,x/allow-a"]);
        let recent = rows(&events, now, Some(Duration::from_secs(60)));
        assert_eq!(recent.len(), 2);
        assert_eq!(recent[1][1], "ingress");
        // Another component's event of the same reason, without weft's record: left out.
        let mut other = events[0].clone();
        other.metadata.annotations = None;
        assert_eq!(rows(&[other], now, None).len(), 1);
    }
}
