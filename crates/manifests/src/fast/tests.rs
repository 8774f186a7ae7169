//! The fast path against serde-saphyr: generated manifests (awkward but
//! valid scalars, comments, separators, CRLF, field orders, invalid values,
//! constructs outside the subset) must give the same objects and the same
//! errors, and the plain YAML generators and kubectl write must take it.

use proptest::prelude::*;

use super::*;
use crate::error::ManifestError;
use crate::parse::{self, ParsedObject, split_documents};

/// The reference: every document through serde-saphyr.
fn slow(text: &str) -> Result<Vec<ParsedObject>, ManifestError> {
    parse::parse_manifest_reference(text)
}

/// Builds manifest text from a list of choices (so proptest can shrink it).
struct Gen {
    choices: Vec<u32>,
    next: usize,
    out: String,
    /// How much a nested block is indented (2 or 4).
    step: usize,
    /// The column of a `- ` the next line starts with (a sequence item's first line).
    dash: Option<usize>,
}

impl Gen {
    fn new(choices: Vec<u32>) -> Self {
        Gen { choices, next: 0, out: String::new(), step: 2, dash: None }
    }

    fn pick(&mut self, n: usize) -> usize {
        let c = self.choices.get(self.next).copied().unwrap_or(0);
        self.next += 1;
        c as usize % n
    }

    /// True one time in `n`.
    fn one_in(&mut self, n: usize) -> bool {
        self.pick(n) == 0
    }

    fn from<'a>(&mut self, pool: &[&'a str]) -> &'a str {
        pool[self.pick(pool.len())]
    }

    fn line(&mut self, indent: usize, text: &str) {
        if self.one_in(12) {
            let pad = " ".repeat(self.pick(6));
            self.out.push_str(&format!("{pad}# a comment: with - odd [chars]\n"));
        }
        if self.one_in(20) {
            self.out.push('\n');
        }
        match self.dash.take() {
            Some(dash) => self.out.push_str(&format!("{}- ", " ".repeat(dash))),
            None => self.out.push_str(&" ".repeat(indent)),
        }
        self.out.push_str(text);
        if self.one_in(10) && !text.ends_with('|') {
            self.out.push_str("   # trailing");
        }
        self.out.push('\n');
    }

    /// `key: value`, where the value may come out empty (null).
    fn field(&mut self, indent: usize, key: &str, value: &str) {
        if value.is_empty() {
            self.line(indent, &format!("{key}:"))
        } else {
            self.line(indent, &format!("{key}: {value}"))
        }
    }

    fn name(&mut self) -> &'static str {
        self.from(&[
            "web",
            "svc-a",
            "\"web\"",
            "'db'",
            "80",
            "'80'",
            "\"8080\"",
            "1.5",
            "0x10",
            "1e3",
            "true",
            "yes",
            "null",
            "~",
            "Null",
            "NULL",
            "nULL",
            "on",
            "'null'",
            "a#b",
            "-a",
            "a:b",
            "it's",
            "'it''s'",
            "\"a\\tb\"",
            "\"a b\"",
            "a b",
            "\"\"",
            "''",
            "x]",
            "a,b",
            "",
            "Web",
            "web.",
            "&a web",
            "!!str web",
            "web-1",
            "[web]",
            "{}",
            "? web",
            "|",
            "\"we\" x",
            "'we'x",
            ":web",
            "@web",
            "%web",
        ])
    }

    fn port(&mut self) -> &'static str {
        self.from(&[
            "80",
            "8080",
            "443",
            "0",
            "65536",
            "-1",
            "'80'",
            "\"80\"",
            "080",
            "0x50",
            "+80",
            "1_000",
            "http",
            "~",
            "",
            "80.0",
            "99999999999999999999",
            "0o17",
            "true",
            "[80]",
            "{}",
            "1e2",
            ".inf",
        ])
    }

    fn target_port(&mut self) -> &'static str {
        self.from(&[
            "8080", "8080", "http", "http", "'http'", "\"8080\"", "web-1", "Http", "0", "70000", "y", "no", "h_p",
            "-x", "~",
        ])
    }

    fn app_protocol(&mut self) -> &'static str {
        self.from(&[
            "http",
            "kubernetes.io/h2c",
            "'kubernetes.io/ws'",
            "\"http2\"",
            "HTTP",
            "grpc_v1",
            "h2c!",
            "/http",
            "~",
            "",
            "80",
            "true",
        ])
    }

    fn ip(&mut self) -> &'static str {
        self.from(&[
            "10.0.0.1",
            "10.0.1.2",
            "'10.0.0.3'",
            "\"10.0.0.4\"",
            "fd00::1",
            "\"fd00::2\"",
            "::1",
            "bad",
            "10.0.0.300",
            "None",
            "",
            "~",
            "10.0.0.1 # c",
        ])
    }

    fn pod_cidr(&mut self) -> &'static str {
        self.from(&["10.244.1.0/24", "'10.244.2.0/24'", "fd00:244::/64", "10.244.1.9/24", "10.244.1.0/33", "bad", "~"])
    }

    fn protocol(&mut self) -> &'static str {
        self.from(&["TCP", "UDP", "SCTP", "tcp", "'TCP'", "ICMP", ""])
    }

    fn boolean(&mut self) -> &'static str {
        self.from(&["true", "false", "True", "yes", "'true'", "~", "", "FALSE", "1"])
    }

    fn nested(&mut self, indent: usize) -> usize {
        indent + self.step
    }

    /// `key:` followed by a sequence of maps, indentless (kubectl) or indented.
    fn seq_of_maps(&mut self, indent: usize, key: &str, n: usize, item: impl Fn(&mut Gen, usize)) {
        self.line(indent, &format!("{key}:"));
        let dash = if self.one_in(2) { indent } else { self.nested(indent) };
        for _ in 0..n {
            if self.one_in(8) {
                // `-` alone, the item's map on the next lines.
                self.line(dash, "-");
            } else {
                self.dash = Some(dash);
            }
            item(self, dash + 2);
            self.dash = None;
        }
    }

    fn metadata(&mut self, indent: usize, service_label: Option<&str>) {
        if self.one_in(30) {
            return self.line(indent, "metadata: {}");
        }
        self.line(indent, "metadata:");
        let i = self.nested(indent);
        let mut fields = vec![0, 1, 2, 3];
        self.shuffle(&mut fields);
        for f in fields {
            match f {
                0 => {
                    let v = if self.one_in(6) { self.name() } else { "web" };
                    self.field(i, "name", v)
                }
                1 if !self.one_in(4) => {
                    let v = if self.one_in(6) { self.name() } else { "default" };
                    self.field(i, "namespace", v)
                }
                2 if service_label.is_some() || self.one_in(3) => {
                    if self.one_in(10) {
                        self.line(i, "labels: {}");
                    } else {
                        self.line(i, "labels:");
                        let j = self.nested(i);
                        if let Some(svc) = service_label {
                            let v = if self.one_in(8) { self.name() } else { svc };
                            self.field(j, "kubernetes.io/service-name", v);
                        }
                        if self.one_in(2) {
                            let v = self.name();
                            self.field(j, "app", v);
                        }
                    }
                }
                3 if self.one_in(3) => {
                    self.line(i, "annotations:");
                    let j = self.nested(i);
                    let v = self.from(&["ConsistentHash", "Random", "Random", "'x: y'", "\"{}\"", "1", ""]);
                    self.field(j, "edgemesh.io/lb-strategy", v);
                    if self.one_in(4) {
                        // kubectl's last-applied copy: a block scalar (outside the subset).
                        self.line(j, "kubectl.kubernetes.io/last-applied-configuration: |");
                        self.line(j + 2, "{\"apiVersion\":\"v1\",\"kind\":\"Service\"}");
                    }
                }
                _ => {}
            }
        }
    }

    fn shuffle(&mut self, v: &mut [usize]) {
        for i in (1..v.len()).rev() {
            let j = self.pick(i + 1);
            v.swap(i, j);
        }
    }

    fn header(&mut self, indent: usize, api: &str, kind: &str) {
        let api = if self.one_in(25) { "v2" } else { api };
        if !self.one_in(40) {
            self.field(indent, "apiVersion", api);
        }
        if !self.one_in(40) {
            self.field(indent, "kind", kind);
        }
    }

    fn service(&mut self, indent: usize) {
        let late_kind = self.one_in(6);
        if !late_kind {
            self.header(indent, "v1", "Service");
        }
        self.metadata(indent, None);
        self.line(indent, "spec:");
        let i = self.nested(indent);
        if self.one_in(4) {
            let v = self.from(&["ClusterIP", "NodePort", "LoadBalancer", "Weird", "''"]);
            self.field(i, "type", v);
        }
        if self.one_in(4) {
            let v = self.ip();
            self.field(i, "clusterIP", v);
        }
        if self.one_in(6) {
            let (a, b) = (self.ip(), self.ip());
            let flow = self.one_in(2);
            if flow {
                self.line(i, &format!("clusterIPs: [{a}, {b}]"));
            } else {
                self.line(i, "clusterIPs:");
                self.line(i, &format!("- {a}"));
            }
        }
        if self.one_in(6) {
            self.field(i, "sessionAffinity", "ClientIP");
            self.line(i, "sessionAffinityConfig:");
            self.line(i + 2, "clientIP:");
            let v = self.from(&["10", "0", "86401", "'5'", ""]);
            self.field(i + 4, "timeoutSeconds", v);
        }
        if self.one_in(8) {
            self.line(i, "selector:");
            self.line(i + 2, "app: web");
        }
        let n = 1 + self.pick(3);
        if self.one_in(12) {
            self.line(i, "ports: []");
        } else {
            self.seq_of_maps(i, "ports", n, |g, j| {
                let mut fields = vec![0, 1, 2, 3, 4, 5];
                g.shuffle(&mut fields);
                for f in fields {
                    match f {
                        0 if !g.one_in(3) => {
                            let v = if g.one_in(6) { g.name() } else { g.from(&["http", "https", "dns"]) };
                            g.field(j, "name", v)
                        }
                        1 if !g.one_in(8) => {
                            let v = if g.one_in(5) { g.port() } else { "80" };
                            g.field(j, "port", v)
                        }
                        2 if g.one_in(2) => {
                            let v = g.target_port();
                            g.field(j, "targetPort", v)
                        }
                        3 if g.one_in(3) => {
                            let v = g.protocol();
                            g.field(j, "protocol", v)
                        }
                        4 if g.one_in(6) => {
                            let v = g.port();
                            g.field(j, "nodePort", v)
                        }
                        5 if g.one_in(3) => {
                            let v = g.app_protocol();
                            g.field(j, "appProtocol", v)
                        }
                        _ => {}
                    }
                }
            });
        }
        if late_kind {
            self.header(indent, "v1", "Service");
        }
    }

    fn slice(&mut self, indent: usize) {
        self.header(indent, "discovery.k8s.io/v1", "EndpointSlice");
        self.metadata(indent, Some("web"));
        let t = self.from(&["IPv4", "IPv4", "IPv6", "FQDN", "ipv4", ""]);
        self.field(indent, "addressType", t);
        let n = self.pick(3);
        self.seq_of_maps(indent, "endpoints", n, |g, j| {
            if g.one_in(2) {
                let (a, b) = (g.ip(), g.ip());
                let list = if g.one_in(2) { a.to_owned() } else { format!("{a}, {b}") };
                g.line(j, &format!("addresses: [{list}]"));
            } else {
                g.line(j, "addresses:");
                let a = g.ip();
                g.line(j, &format!("- {a}"));
            }
            if g.one_in(3) {
                g.line(j, "conditions:");
                let b = g.boolean();
                g.field(j + 2, "ready", b);
            }
            if g.one_in(2) {
                let v = g.name();
                g.field(j, "nodeName", v);
            }
        });
        let n = self.pick(3);
        self.seq_of_maps(indent, "ports", n, |g, j| {
            if !g.one_in(4) {
                let v = g.from(&["http", "dns", "", "'http'"]);
                g.field(j, "name", v);
            }
            let v = if g.one_in(5) { g.port() } else { "8080" };
            g.field(j, "port", v);
        });
    }

    fn endpoints(&mut self, indent: usize) {
        self.header(indent, "v1", "Endpoints");
        self.metadata(indent, None);
        let n = 1 + self.pick(2);
        self.seq_of_maps(indent, "subsets", n, |g, j| {
            let n = 1 + g.pick(2);
            g.seq_of_maps(j, "addresses", n, |g, k| {
                let v = g.ip();
                g.field(k, "ip", v);
                if g.one_in(2) {
                    let v = g.name();
                    g.field(k, "nodeName", v);
                }
            });
            g.seq_of_maps(j, "ports", 1, |g, k| {
                let v = g.port();
                g.field(k, "port", v);
            });
        });
    }

    fn node(&mut self, indent: usize) {
        self.header(indent, "v1", "Node");
        self.metadata(indent, None);
        if self.one_in(2) {
            self.line(indent, "spec:");
            let i = self.nested(indent);
            if self.one_in(2) {
                let v = self.pod_cidr();
                self.field(i, "podCIDR", v);
            }
            if self.one_in(2) {
                let (a, b) = (self.pod_cidr(), self.pod_cidr());
                if self.one_in(2) {
                    self.line(i, &format!("podCIDRs: [{a}, {b}]"));
                } else {
                    self.line(i, "podCIDRs:");
                    self.line(i, &format!("- {a}"));
                }
            }
            if self.one_in(3) {
                self.field(i, "providerID", "edge://1");
            }
        }
        self.line(indent, "status:");
        let i = self.nested(indent);
        let n = 1 + self.pick(2);
        self.seq_of_maps(i, "addresses", n, |g, j| {
            let t = g.from(&["InternalIP", "ExternalIP", "Hostname", ""]);
            g.field(j, "type", t);
            let v = g.ip();
            g.field(j, "address", v);
        });
    }

    fn other(&mut self, indent: usize) {
        // A Deployment's spec before its kind is typed as a Service's spec.
        if self.one_in(2) {
            self.line(indent, "spec:");
            self.line(indent + 2, "replicas: 3");
            if self.one_in(4) {
                self.line(indent + 2, "ports: 5");
            }
        }
        self.header(indent, "apps/v1", "Deployment");
        self.metadata(indent, None);
    }

    /// Constructs outside the subset, somewhere in a document.
    fn odd(&mut self, indent: usize) {
        let text = self.from(&[
            "extra: &anchor value",
            "extra: *alias",
            "extra: !tag value",
            "extra: {a: 1}",
            "extra: >\n  folded",
            "extra: [a, [b]]",
            "extra: \"esc\\\"aped\"",
            "extra: multi\n  line",
            "kind: Service",
            "? complex",
            "extra:\ttab",
            "extra: caf\u{e9}",
            "extra: a: b",
            "- stray item",
        ]);
        for (n, line) in text.split('\n').enumerate() {
            let pad = if n == 0 { indent } else { 0 };
            self.out.push_str(&format!("{}{line}\n", " ".repeat(pad)));
        }
    }

    fn document(&mut self, indent: usize) {
        self.step = if self.one_in(4) { 4 } else { 2 };
        match self.pick(7) {
            0 | 1 => self.service(indent),
            2 | 3 => self.slice(indent),
            4 => self.endpoints(indent),
            5 => self.node(indent),
            _ => self.other(indent),
        }
        if self.one_in(15) {
            self.odd(indent);
        }
    }

    fn manifest(mut self) -> String {
        if self.one_in(4) {
            self.out.push_str("# generated\n");
        }
        let docs = 1 + self.pick(4);
        for d in 0..docs {
            if d > 0 || self.one_in(3) {
                let marker = self.from(&["---", "---", "--- # next", "---   "]);
                self.out.push_str(marker);
                self.out.push('\n');
            }
            if self.one_in(10) {
                self.line(0, "apiVersion: v1");
                self.line(0, "kind: List");
                self.seq_of_maps(0, "items", 2, |g, j| g.service(j));
            } else {
                self.document(0);
            }
        }
        if self.one_in(5) { self.out.replace('\n', "\r\n") } else { self.out }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn fast_path_equals_serde_saphyr(choices in proptest::collection::vec(any::<u32>(), 200..400)) {
        let text = Gen::new(choices).manifest();
        prop_assert_eq!(parse::parse_manifest(&text), slow(&text), "manifest:\n{}", text);
    }
}

/// Many generated documents must take the fast path (at least a quarter;
/// the others hold a value or construct it leaves to serde-saphyr), or the
/// property above proves little.
#[test]
fn generated_documents_mostly_take_the_fast_path() {
    let (mut fast, mut total) = (0, 0);
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..500 {
        let choices = (0..300)
            .map(|_| {
                // xorshift64
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 32) as u32
            })
            .collect();
        let text = Gen::new(choices).manifest();
        for chunk in split_documents(&text) {
            total += 1;
            let f = document(chunk.text).is_some();
            fast += usize::from(f);
        }
    }
    eprintln!("{fast} of {total} generated documents took the fast path");
    assert!(fast * 4 > total, "only {fast} of {total} documents took the fast path");
}

#[test]
fn generator_and_kubectl_output_take_the_fast_path() {
    let generated = "apiVersion: v1\nkind: Service\nmetadata:\n  name: svc-000001\n  namespace: bench\nspec:\n  ports:\n  \
                     - name: http\n    port: 80\n    targetPort: 8080\n";
    let slice = "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-000001-x\n  \
                 namespace: bench\n  labels:\n    kubernetes.io/service-name: svc-000001\naddressType: IPv4\nports:\n\
                 - name: http\n  port: 8080\nendpoints:\n- addresses: [10.0.1.1]\n  nodeName: node-0\n\
                 - addresses: [\"10.0.1.2\"]\n  conditions:\n    ready: true\n  nodeName: node-1\n";
    let kubectl = "apiVersion: v1\r\nkind: Service\r\nmetadata:\r\n  annotations:\r\n    edgemesh.io/lb-strategy: Random\r\n  \
                   creationTimestamp: \"2024-01-01T00:00:00Z\"\r\n  labels:\r\n    app: web\r\n  name: web\r\n  \
                   namespace: default\r\n  resourceVersion: \"123\"\r\n  uid: 0b6f-11\r\nspec:\r\n  clusterIP: 10.96.0.10\r\n  \
                   clusterIPs:\r\n  - 10.96.0.10\r\n  internalTrafficPolicy: Cluster\r\n  ipFamilies:\r\n  - IPv4\r\n  \
                   ipFamilyPolicy: SingleStack\r\n  ports:\r\n  - appProtocol: kubernetes.io/h2c\r\n    name: http # the web port\r\n    port: 80\r\n    \
                   protocol: TCP\r\n    targetPort: http\r\n  selector:\r\n    app: web\r\n  sessionAffinity: None\r\n  \
                   type: ClusterIP\r\nstatus:\r\n  loadBalancer: {}\r\n";
    let node = "apiVersion: v1\nkind: Node\nmetadata:\n  name: edge-1\nspec:\n  podCIDR: 10.244.1.0/24\n  podCIDRs:\n  \
                - 10.244.1.0/24\n  - fd00:244:1::/64\n  providerID: edge://1\nstatus:\n  addresses:\n  - address: 10.0.0.5\n    \
                type: InternalIP\n  - address: edge-1\n    type: Hostname\n";
    for text in [generated, slice, kubectl, node] {
        let chunk = &split_documents(text)[0];
        assert!(document(chunk.text).is_some(), "not on the fast path:\n{text}");
        assert_eq!(parse::parse_manifest(text), slow(text));
    }
}

#[test]
fn constructs_outside_the_subset_fall_back() {
    let base = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: 80\n";
    for extra in [
        "x: &a 1\n",       // anchor
        "x: *a\n",         // alias
        "x: !t 1\n",       // tag
        "x: |\n  text\n",  // block scalar
        "x: >\n  text\n",  // folded scalar
        "x: {a: 1}\n",     // flow mapping
        "x: [a, [b]]\n",   // nested flow
        "x: \"a\\nb\"\n",  // escape
        "x: 'it''s'\n",    // quote escape
        "x: a\n  b\n",     // multi-line plain scalar
        "x:\t1\n",         // tab
        "x: caf\u{e9}\n",  // non-ASCII
        "kind: Service\n", // duplicate key
        "? x\n",           // complex key
        "...\n",           // document end
        "x: a: b\n",       // a value that is not a scalar
    ] {
        let text = format!("{base}{extra}");
        assert!(document(&text).is_none(), "took the fast path:\n{text}");
        assert_eq!(parse::parse_manifest(&text), slow(&text), "\n{text}");
    }
    // Scalars whose type YAML decides differently are left to serde-saphyr.
    for port in ["'80'", "080", "0x50", "+80", "1_000", "yes", "~x"] {
        let text = base.replace("port: 80", &format!("port: {port}"));
        assert!(document(&text).is_none(), "took the fast path:\n{text}");
    }
    for name in ["yes", "On", "nULL", "true"] {
        let text = base.replace("name: web", &format!("name: {name}"));
        assert!(document(&text).is_none(), "took the fast path:\n{text}");
    }
}

#[test]
fn errors_keep_their_lines_on_the_fast_path() {
    // Valid YAML, invalid object: the fast path parses it, convert reports it.
    let text =
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - name: http\n    port: 70000\n";
    assert!(document(text).is_some());
    let err = parse::parse_manifest(text).unwrap_err();
    assert_eq!(err.line(), 8, "{err}");
    assert_eq!(Err(err), slow(text));
    // Broken YAML: serde-saphyr's error and line.
    let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  name: again\n";
    let err = parse::parse_manifest(text).unwrap_err();
    assert!(matches!(err, ManifestError::Yaml { line: 5, .. }), "{err}");
}
