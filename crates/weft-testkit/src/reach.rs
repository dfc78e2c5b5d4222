//! Reachability truth tables, in the manner of the upstream NetworkPolicy e2e suite: an
//! expectation for every (from, to) pair of a set of pods named `namespace/pod`, built from a
//! default and overrides (one pair, everything into a pod, everything out of a pod, or every
//! pair matching two peer patterns), compared with what was observed and printed as three
//! tables (expected, observed, comparison) plus the wrong pairs in words.

use crate::probe::Outcome;

/// A pattern over pods: an empty part matches anything.
#[derive(Clone, Copy, Debug, Default)]
pub struct Peer<'a> {
    pub namespace: Option<&'a str>,
    pub pod: Option<&'a str>,
}

impl<'a> Peer<'a> {
    /// Every pod.
    pub fn any() -> Peer<'a> {
        Peer::default()
    }
    /// Every pod of a namespace.
    pub fn ns(namespace: &'a str) -> Peer<'a> {
        Peer { namespace: Some(namespace), pod: None }
    }
    /// One pod.
    pub fn pod(namespace: &'a str, pod: &'a str) -> Peer<'a> {
        Peer { namespace: Some(namespace), pod: Some(pod) }
    }
    pub fn matches(&self, name: &str) -> bool {
        let (ns, pod) = name.split_once('/').unwrap_or(("", name));
        self.namespace.is_none_or(|n| n == ns) && self.pod.is_none_or(|p| p == pod)
    }
}

/// The expected reachability between `pods` (each `namespace/pod`), from (rows) to (columns).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reachability {
    pods: Vec<String>,
    expected: Vec<bool>,
}

impl Reachability {
    /// Every pair expected `default`.
    pub fn new(pods: &[String], default: bool) -> Reachability {
        Reachability { pods: pods.to_vec(), expected: vec![default; pods.len() * pods.len()] }
    }

    pub fn pods(&self) -> &[String] {
        &self.pods
    }

    fn index(&self, pod: &str) -> usize {
        self.pods.iter().position(|p| p == pod).unwrap_or_else(|| panic!("{pod} is not one of {:?}", self.pods))
    }

    /// The expectation from `from` to `to`.
    pub fn get(&self, from: &str, to: &str) -> bool {
        self.expected[self.index(from) * self.pods.len() + self.index(to)]
    }

    /// One pair.
    pub fn expect(&mut self, from: &str, to: &str, connected: bool) -> &mut Self {
        let i = self.index(from) * self.pods.len() + self.index(to);
        self.expected[i] = connected;
        self
    }

    /// Everything into `to`.
    pub fn expect_all_ingress(&mut self, to: &str, connected: bool) -> &mut Self {
        let t = self.index(to);
        for f in 0..self.pods.len() {
            self.expected[f * self.pods.len() + t] = connected;
        }
        self
    }

    /// Everything out of `from`.
    pub fn expect_all_egress(&mut self, from: &str, connected: bool) -> &mut Self {
        let f = self.index(from);
        for t in 0..self.pods.len() {
            self.expected[f * self.pods.len() + t] = connected;
        }
        self
    }

    /// Every pair whose source matches `from` and destination matches `to`.
    pub fn expect_peer(&mut self, from: Peer, to: Peer, connected: bool) -> &mut Self {
        let n = self.pods.len();
        for f in 0..n {
            for t in 0..n {
                if from.matches(&self.pods[f]) && to.matches(&self.pods[t]) {
                    self.expected[f * n + t] = connected;
                }
            }
        }
        self
    }

    /// Compares observations (row-major, as [`Reachability::pairs`] lists them) with the
    /// expectation; a pod to itself is left out when `ignore_loopback` (as upstream does: what
    /// a policy does to a pod's traffic to itself is not defined).
    pub fn compare(&self, observed: &[Outcome], ignore_loopback: bool) -> Comparison {
        assert_eq!(observed.len(), self.expected.len(), "one observation per pair");
        let n = self.pods.len();
        let mut wrong = vec![];
        for f in 0..n {
            for t in 0..n {
                let i = f * n + t;
                if (ignore_loopback && f == t) || observed[i].connected() == self.expected[i] {
                    continue;
                }
                wrong.push((f, t));
            }
        }
        Comparison { expected: self.clone(), observed: observed.to_vec(), ignore_loopback, wrong }
    }

    /// Every (from, to) pair, row-major.
    pub fn pairs(&self) -> Vec<(String, String)> {
        self.pods.iter().flat_map(|f| self.pods.iter().map(move |t| (f.clone(), t.clone()))).collect()
    }
}

/// An expectation against observations.
#[derive(Clone, Debug)]
pub struct Comparison {
    expected: Reachability,
    observed: Vec<Outcome>,
    ignore_loopback: bool,
    wrong: Vec<(usize, usize)>,
}

impl Comparison {
    pub fn ok(&self) -> bool {
        self.wrong.is_empty()
    }

    /// How many pairs differ.
    pub fn wrong(&self) -> usize {
        self.wrong.len()
    }

    fn table(&self, title: &str, cell: impl Fn(usize, usize) -> char) -> String {
        let pods = &self.expected.pods;
        let mut s = format!("{title}:\n  -    ");
        for p in pods {
            s += &format!(" {p:>4}");
        }
        s.push('\n');
        for (f, from) in pods.iter().enumerate() {
            s += &format!("  {from:<5}");
            for t in 0..pods.len() {
                s += &format!(" {:>4}", cell(f, t));
            }
            s.push('\n');
        }
        s
    }

    /// Expected and observed tables (`.` connected, `X` not, `!` connected but broken), the
    /// comparison (`.` as expected, `X` wrong, `-` not compared), and the wrong pairs in words.
    pub fn render(&self) -> String {
        let n = self.expected.pods.len();
        let pods = &self.expected.pods;
        let mut s = self.table("expected", |f, t| if self.expected.expected[f * n + t] { '.' } else { 'X' });
        s += &self.table("observed", |f, t| self.observed[f * n + t].mark());
        s += &self.table("comparison", |f, t| {
            if self.ignore_loopback && f == t {
                '-'
            } else if self.wrong.contains(&(f, t)) {
                'X'
            } else {
                '.'
            }
        });
        for &(f, t) in &self.wrong {
            let want = if self.expected.expected[f * n + t] { "allowed" } else { "denied" };
            s += &format!(
                "  {} -> {}: expected {want}, observed {}\n",
                pods[f],
                pods[t],
                self.observed[f * n + t].describe()
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> Vec<String> {
        ["x", "y", "z"].iter().flat_map(|n| ["a", "b", "c"].iter().map(move |p| format!("{n}/{p}"))).collect()
    }

    #[test]
    fn peers_ingress_egress_and_pairs() {
        let mut r = Reachability::new(&pods(), true);
        r.expect_peer(Peer::any(), Peer::ns("x"), false);
        assert!(!r.get("y/b", "x/c") && r.get("x/a", "y/a"));
        r.expect_all_egress("x/a", false).expect("x/a", "y/b", true);
        assert!(!r.get("x/a", "y/a") && r.get("x/a", "y/b"));
        r.expect_all_ingress("z/c", false);
        assert!(!r.get("y/a", "z/c") && r.get("y/a", "z/b"));
        r.expect_peer(Peer::pod("z", "a"), Peer::pod("z", "c"), true);
        assert!(r.get("z/a", "z/c") && !r.get("z/b", "z/c"));
        assert_eq!(r.pairs().len(), 81);
        assert_eq!(r.pairs()[1], ("x/a".to_string(), "x/b".to_string()));
    }

    #[test]
    fn a_comparison_ignores_loopback_and_names_what_is_wrong() {
        let mut r = Reachability::new(&pods(), true);
        r.expect_all_ingress("x/a", false);
        let mut obs = vec![Outcome::Connected; 81];
        // x/a to itself is not compared; y/a to x/a should have been denied.
        assert!(!r.compare(&obs, true).ok() && r.compare(&obs, true).wrong() == 8);
        for (i, (_, to)) in r.pairs().iter().enumerate() {
            if to == "x/a" {
                obs[i] = Outcome::TimedOut;
            }
        }
        obs[0] = Outcome::Connected;
        assert!(r.compare(&obs, true).ok());
        assert!(!r.compare(&obs, false).ok());
        obs[3 * 9] = Outcome::Connected; // y/a -> x/a
        let c = r.compare(&obs, true);
        assert_eq!(c.wrong(), 1);
        let text = c.render();
        assert!(text.contains("y/a -> x/a: expected denied, observed connected"), "{text}");
        assert!(text.contains("comparison:"), "{text}");
    }
}
