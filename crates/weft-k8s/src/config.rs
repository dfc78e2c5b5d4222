//! weft's own settings: the ConfigMap `kube-system/weft-config` and its keys.

pub const NAMESPACE: &str = "kube-system";
pub const NAME: &str = "weft-config";
/// LoadBalancer address pools: CIDRs or `first-last` ranges, comma separated.
pub const LOAD_BALANCER_POOLS: &str = "loadBalancerPools";
/// The cluster DNS's upstream servers.
pub const DNS_UPSTREAMS: &str = "dnsUpstreams";
/// Where a Service's `externalIPs` may be (CVE-2020-8554 policy).
pub const EXTERNAL_IP_CIDRS: &str = "externalIPCIDRs";

/// `kube-system/weft-config`, as messages name it.
pub const PATH: &str = "kube-system/weft-config";

/// Is this (namespace, name) the config ConfigMap?
pub fn is_config(namespace: Option<&str>, name: Option<&str>) -> bool {
    namespace == Some(NAMESPACE) && name == Some(NAME)
}

/// The value of `key` in the config ConfigMap among `configmaps` (None when it or the key is absent).
#[cfg(feature = "objects")]
pub fn value<'a, C>(configmaps: impl IntoIterator<Item = &'a C>, key: &str) -> Option<&'a str>
where
    C: std::borrow::Borrow<k8s_openapi::api::core::v1::ConfigMap> + 'a,
{
    configmaps
        .into_iter()
        .map(|c| c.borrow())
        .find(|c| is_config(c.metadata.namespace.as_deref(), c.metadata.name.as_deref()))
        .and_then(|c| c.data.as_ref()?.get(key))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_is_found_only_in_kube_system() {
        assert_eq!(PATH, format!("{NAMESPACE}/{NAME}"));
        assert!(is_config(Some("kube-system"), Some("weft-config")));
        assert!(!is_config(Some("default"), Some("weft-config")));
        assert!(!is_config(None, Some("weft-config")));
        assert!(!is_config(Some("kube-system"), None));
    }

    #[cfg(feature = "objects")]
    #[test]
    fn a_value_comes_from_the_config_map_only() {
        use k8s_openapi::api::core::v1::ConfigMap;
        let cm = |ns: &str, name: &str, v: &str| -> ConfigMap {
            serde_json::from_value(serde_json::json!({"metadata": {"namespace": ns, "name": name},
                "data": {LOAD_BALANCER_POOLS: v}}))
            .unwrap()
        };
        let cms = [cm("default", NAME, "wrong"), cm(NAMESPACE, "other", "wrong"), cm(NAMESPACE, NAME, "10.0.0.0/30")];
        assert_eq!(value(&cms, LOAD_BALANCER_POOLS), Some("10.0.0.0/30"));
        assert_eq!(value(&cms, DNS_UPSTREAMS), None);
        assert_eq!(value(&cms[..2], LOAD_BALANCER_POOLS), None);
        let empty: [ConfigMap; 0] = [];
        assert_eq!(value(&empty, LOAD_BALANCER_POOLS), None);
    }
}
