//! HTTPS listeners for real: TLS terminated by the gateway with
//! certificates from a test CA, chosen by SNI among the listeners of one
//! port, checked by curl (`--cacert`, `--resolve`) and a rustls client that
//! compares the certificate presented; and a certificate rotated under a
//! loop of requests on new connections, with no failed request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use edgemesh_core::AppProtocol;
use edgemesh_gateway::tls::{CertificateFile, FileCertificates};
use tokio::sync::Mutex;

mod support;

use support::net::{
    Ca, Loaded, MemoryCertificates, RunningGateway, StaticPools, curl, get, http_backend, own_loopback, tls_connect,
};

fn objects(port: u16) -> String {
    format!(
        r#"
kind: Gateway
metadata: {{name: edge, namespace: shop}}
spec:
  gatewayClassName: edgemesh
  listeners:
  - {{name: shop, port: {port}, protocol: HTTPS, hostname: shop.example.com, tls: {{certificateRefs: [{{name: shop-tls}}]}}}}
  - {{name: wild, port: {port}, protocol: HTTPS, hostname: "*.example.com", tls: {{mode: Terminate, certificateRefs: [{{kind: Secret, name: wild-tls}}]}}}}
  - {{name: default, port: {port}, protocol: HTTPS, tls: {{certificateRefs: [{{name: default-tls}}]}}}}
---
kind: HTTPRoute
metadata: {{name: web, namespace: shop}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
  - backendRefs: [{{name: web, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /old}}}}]
    filters: [{{type: RequestRedirect, requestRedirect: {{hostname: new.example.com}}}}]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_test_ca_and_sni_choosing_among_certificates() {
    let ca = Ca::new();
    let (shop, wild, default) =
        (ca.issue(&["shop.example.com"]), ca.issue(&["*.example.com"]), ca.issue(&["default.test"]));
    let certs = MemoryCertificates::default();
    certs.set("shop", "shop-tls", shop.pem.clone());
    certs.set("shop", "wild-tls", wild.pem.clone());
    certs.set("shop", "default-tls", default.pem.clone());
    let port = 18443;
    let compiled = Loaded::parse(&objects(port)).compile(&[("shop/web", 80)], &certs);
    let pools = StaticPools::default().with("shop", "web", 80, http_backend("web").await, AppProtocol::Http1);
    let gateway = RunningGateway::start(compiled, pools, own_loopback(1)).await;
    let ip = gateway.ip;

    // curl trusts the test CA only: each name verifies against the
    // certificate the gateway chose for it, and the request is https.
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let ca_arg = ca_file.to_str().unwrap();
    for name in ["shop.example.com", "cart.example.com", "default.test"] {
        let resolve = format!("{name}:{port}:{ip}");
        let url = format!("https://{name}:{port}/");
        let (ok, out) = curl(&["--cacert", ca_arg, "--resolve", &resolve, "-w", " %{http_code}", &url]).await;
        assert!(ok, "{name}: {out}");
        assert_eq!(out, format!("web proto=https host={name}:{port} 200"), "{name}");
    }
    // TLS 1.2 and 1.3 only.
    let resolve = format!("shop.example.com:{port}:{ip}");
    let url = format!("https://shop.example.com:{port}/");
    let tls12 = curl(&["--cacert", ca_arg, "--resolve", &resolve, "--tlsv1.2", "--tls-max", "1.2", &url]).await;
    assert!(tls12.0, "TLS 1.2: {}", tls12.1);
    // (SECLEVEL=0: this curl's OpenSSL would not offer TLS 1.1 otherwise,
    // and the refusal must be the server's.)
    let old = ["--tlsv1.1", "--tls-max", "1.1", "--ciphers", "DEFAULT@SECLEVEL=0"];
    let tls11 = curl(&[&["--cacert", ca_arg, "--resolve", &resolve][..], &old, &[&url]].concat()).await;
    assert!(!tls11.0 && tls11.1.contains("alert"), "TLS 1.1 is refused by the server (an alert): {}", tls11.1);
    // A redirect that names no scheme keeps the listener's: https.
    let url = format!("https://shop.example.com:{port}/old/x");
    let (ok, out) =
        curl(&["--cacert", ca_arg, "--resolve", &resolve, "-o", "/dev/null", "-w", "%{redirect_url}", &url]).await;
    assert!(ok && out.starts_with("https://new.example.com"), "{out}");
    // HTTP/2 over TLS (ALPN h2) as well.
    let (ok, out) = curl(&[
        "--http2",
        "--cacert",
        ca_arg,
        "--resolve",
        &resolve,
        "-w",
        " %{http_version}",
        &format!("https://shop.example.com:{port}/"),
    ])
    .await;
    assert!(ok && out.ends_with(" 2"), "{out}");

    // Which certificate each name got: the most specific listener's; no
    // SNI or an unknown name: the listener without hostname.
    let client = ca.client();
    for (name, want) in [("shop.example.com", &shop), ("cart.example.com", &wild), ("default.test", &default)] {
        let (mut session, presented) = tls_connect(&client, gateway.addr(port), name).await.unwrap();
        assert!(presented == want.der, "{name} got another certificate");
        assert_eq!(get(&mut session, name, "/").await.unwrap().0, 200);
    }
    // A name only the default certificate could serve: the client refuses it.
    assert!(tls_connect(&client, gateway.addr(port), "other.test").await.is_err());
    // Plain HTTP on the HTTPS port is not served.
    let (ok, _) = curl(&[&format!("http://{ip}:{port}/")]).await;
    assert!(!ok);
}

#[test]
fn missing_invalid_and_ungranted_certificates_are_listener_conditions_and_the_rest_is_served() {
    let ca = Ca::new();
    let certs = MemoryCertificates::default();
    certs.set("shop", "good", ca.issue(&["shop.example.com"]).pem);
    certs.set("other", "theirs", ca.issue(&["theirs.example.com"]).pem);
    let mut mismatched = ca.issue(&["x.example.com"]).pem;
    mismatched.key = ca.issue(&["y.example.com"]).pem.key;
    certs.set("shop", "mismatched", mismatched);
    let mut junk = ca.issue(&["x.example.com"]).pem;
    junk.chain = b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n".to_vec();
    certs.set("shop", "junk", junk);
    let yaml = |grant: &str| {
        format!(
            r#"
kind: Gateway
metadata: {{name: edge, namespace: shop, generation: 2}}
spec:
  gatewayClassName: edgemesh
  listeners:
  - {{name: good, port: 443, protocol: HTTPS, tls: {{certificateRefs: [{{name: good}}]}}}}
  - {{name: missing, port: 444, protocol: HTTPS, tls: {{certificateRefs: [{{name: nope}}]}}}}
  - {{name: mismatched, port: 445, protocol: HTTPS, tls: {{certificateRefs: [{{name: mismatched}}]}}}}
  - {{name: junk, port: 446, protocol: HTTPS, tls: {{certificateRefs: [{{name: junk}}]}}}}
  - {{name: foreign, port: 447, protocol: HTTPS, tls: {{certificateRefs: [{{name: theirs, namespace: other}}]}}}}
  - {{name: second, port: 448, protocol: HTTPS, tls: {{certificateRefs: [{{name: nope}}, {{name: good}}]}}}}
  - {{name: configmap, port: 449, protocol: HTTPS, tls: {{certificateRefs: [{{kind: ConfigMap, name: good}}]}}}}
  - {{name: passthrough, port: 450, protocol: HTTPS, tls: {{mode: Passthrough}}}}
{grant}"#
        )
    };
    let compiled = Loaded::parse(&yaml("")).compile(&[], &certs);
    let edge = compiled.gateways.values().next().unwrap();
    let listener = |name: &str| &edge.listeners.iter().find(|l| l.name == name).unwrap().conditions;
    let cond = |name: &str, kind: &str| {
        let c = listener(name).iter().find(|c| c.kind == kind).unwrap_or_else(|| panic!("{name}: no {kind}"));
        (c.status, c.reason, c.message.clone())
    };
    assert!(cond("good", "ResolvedRefs").0);
    assert!(cond("good", "Programmed").0);
    for (name, reason, says) in [
        ("missing", "InvalidCertificateRef", "tls.certificateRefs[0]: no such Secret"),
        ("mismatched", "InvalidCertificateRef", "the key cannot be used with the certificate"),
        ("junk", "InvalidCertificateRef", "Secret shop/junk"),
        ("foreign", "RefNotPermitted", "no ReferenceGrant there allows Gateways from shop"),
        ("configmap", "InvalidCertificateRef", "ConfigMap (group \"\") is not a Secret"),
    ] {
        let (status, why, message) = cond(name, "ResolvedRefs");
        assert_eq!((status, why), (false, reason), "{name}: {message}");
        assert!(message.contains(says), "{name}: {message}");
        assert!(!cond(name, "Programmed").0, "{name} is not served");
    }
    // One bad reference of two: served with the good one, and said.
    assert!(!cond("second", "ResolvedRefs").0);
    assert!(cond("second", "Programmed").0);
    let (status, reason, _) = cond("passthrough", "Accepted");
    assert_eq!((status, reason), (false, "UnsupportedValue"));
    assert_eq!(compiled.ports.keys().copied().collect::<Vec<_>>(), [443, 448]);

    // A ReferenceGrant in the Secret's namespace lets the Gateway use it.
    let grant = "---\nkind: ReferenceGrant\nmetadata: {name: certs, namespace: other}\n\
                 spec: {from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: shop}], to: [{group: '', kind: Secret}]}\n";
    let compiled = Loaded::parse(&yaml(grant)).compile(&[], &certs);
    assert!(compiled.ports.contains_key(&447), "granted");
}

/// Writes a certificate's PEM files as a rotation would: new files renamed
/// over the old ones.
fn write_pem(dir: &std::path::Path, issued: &support::net::Issued) {
    for (name, bytes) in [("tls.crt", &issued.pem.chain), ("tls.key", &issued.pem.key)] {
        let tmp = dir.join(format!("{name}.new"));
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_rotated_under_load_fails_no_request_and_new_handshakes_see_it() {
    let ca = Ca::new();
    let (old, new) = (ca.issue(&["shop.example.com"]), ca.issue(&["shop.example.com"]));
    let dir = tempfile::tempdir().unwrap();
    write_pem(dir.path(), &old);
    let files = FileCertificates::new([CertificateFile {
        namespace: "shop".into(),
        name: "shop-tls".into(),
        cert_file: dir.path().join("tls.crt"),
        key_file: dir.path().join("tls.key"),
        ca_file: None,
    }]);
    let port = 18446;
    let yaml = format!(
        "kind: Gateway\nmetadata: {{name: edge, namespace: shop}}\nspec:\n  gatewayClassName: edgemesh\n  \
         listeners: [{{name: tls, port: {port}, protocol: HTTPS, tls: {{certificateRefs: [{{name: shop-tls}}]}}}}]\n---\n\
         kind: HTTPRoute\nmetadata: {{name: web, namespace: shop}}\n\
         spec: {{parentRefs: [{{name: edge}}], rules: [{{backendRefs: [{{name: web, port: 80}}]}}]}}\n"
    );
    let objects = Loaded::parse(&yaml);
    let services = [("shop/web", 80)];
    let pools = StaticPools::default().with("shop", "web", 80, http_backend("web").await, AppProtocol::Http1);
    let mut gateway = RunningGateway::start(objects.compile(&services, &files), pools, own_loopback(2)).await;
    let addr = gateway.addr(port);
    // Full handshakes: a resumed session continues its first handshake's
    // certificate (as with any TLS server) and presents none.
    let client = ca.client_without_resumption();

    // A connection opened before the rotation, kept alive across it.
    let (mut held, presented) = tls_connect(&client, addr, "shop.example.com").await.unwrap();
    assert!(presented == old.der);
    assert_eq!(get(&mut held, "shop.example.com", "/").await.unwrap().0, 200);

    // Two clients, each a loop of requests on new connections.
    let stop = Arc::new(AtomicBool::new(false));
    // (when the handshake began, whether the request succeeded, the certificate seen)
    let log = Arc::new(Mutex::new(Vec::<(Instant, bool, bool)>::new()));
    let mut loops = Vec::new();
    for _ in 0..2 {
        let (client, stop, log, old_der) = (client.clone(), stop.clone(), log.clone(), old.der.clone());
        loops.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let began = Instant::now();
                let result = async {
                    let (mut session, presented) = tls_connect(&client, addr, "shop.example.com").await?;
                    let (status, _) = get(&mut session, "shop.example.com", "/").await?;
                    Ok::<_, std::io::Error>((status, presented))
                }
                .await;
                let entry = match result {
                    Ok((200, presented)) => (began, true, presented == old_der),
                    _ => (began, false, false),
                };
                log.lock().await.push(entry);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Rotate: new files, the stamp changes, compile again, swap.
    let stamp = files.stamp();
    write_pem(dir.path(), &new);
    assert_ne!(files.stamp(), stamp, "the rotation is noticed");
    gateway.update(objects.compile(&services, &files)).await;
    let swapped = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.unwrap();
    }

    let log = log.lock().await;
    let failed = log.iter().filter(|(_, ok, _)| !ok).count();
    let before = log.iter().filter(|(at, _, _)| *at < swapped).count();
    let after: Vec<_> = log.iter().filter(|(at, _, _)| *at >= swapped).collect();
    eprintln!("{} requests on new connections, {before} before the swap, {} after", log.len(), after.len());
    assert_eq!(failed, 0, "no request failed across the rotation");
    assert!(before >= 20 && after.len() >= 20, "load on both sides of the swap: {before} / {}", after.len());
    assert!(log.iter().any(|(at, _, old)| *at < swapped && *old), "the old certificate was served before");
    assert!(after.iter().all(|(_, _, old)| !old), "every handshake after the swap sees the new certificate");

    // The connection opened before the rotation goes on, on its old session.
    assert_eq!(get(&mut held, "shop.example.com", "/").await.unwrap().0, 200);
    let (_, presented) = tls_connect(&client, addr, "shop.example.com").await.unwrap();
    assert!(presented == new.der);
}

/// `frontendValidation` (Istio's `MUTUAL`): a client without a certificate,
/// or with one of another CA, gets no answer; one with a certificate of the
/// Secret's `ca.crt` does. A listener asking for validation it cannot have
/// is not served; one that does not validate on a validating port conflicts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_and_checked_on_a_validating_listener() {
    let (ca, stranger) = (Ca::new(), Ca::new());
    let certs = MemoryCertificates::default();
    let mut server = ca.issue(&["shop.example.com"]).pem;
    server.ca = Some(ca.pem().into_bytes());
    certs.set("shop", "shop-tls", server);
    certs.set("shop", "no-ca", ca.issue(&["plain.example.com"]).pem);
    let port = 18447;
    let yaml = format!(
        r#"
kind: Gateway
metadata: {{name: edge, namespace: shop}}
spec:
  gatewayClassName: edgemesh
  listeners:
  - name: mutual
    port: {port}
    protocol: HTTPS
    hostname: shop.example.com
    tls: {{certificateRefs: [{{name: shop-tls}}], frontendValidation: {{caCertificateRefs: [{{name: shop-tls}}]}}}}
  - {{name: plain, port: {port}, protocol: HTTPS, hostname: plain.example.com, tls: {{certificateRefs: [{{name: no-ca}}]}}}}
  - name: no-ca
    port: 18448
    protocol: HTTPS
    tls: {{certificateRefs: [{{name: no-ca}}], frontendValidation: {{caCertificateRefs: [{{name: no-ca}}]}}}}
---
kind: HTTPRoute
metadata: {{name: web, namespace: shop}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
  - backendRefs: [{{name: web, port: 80}}]
"#
    );
    let compiled = Loaded::parse(&yaml).compile(&[("shop/web", 80)], &certs);
    let edge = compiled.gateways.values().next().unwrap();
    let cond = |name: &str, kind: &str| {
        let l = edge.listeners.iter().find(|l| l.name == name).unwrap();
        l.conditions.iter().find(|c| c.kind == kind).map(|c| (c.status, c.reason))
    };
    assert_eq!(cond("mutual", "Programmed"), Some((true, "Programmed")));
    assert_eq!(cond("plain", "Conflicted"), Some((true, "ClientValidationConflict")));
    assert_eq!(cond("no-ca", "ResolvedRefs"), Some((false, "InvalidCACertificateRef")));
    assert_eq!(cond("no-ca", "Programmed").map(|c| c.0), Some(false), "not served without validation");
    assert!(compiled.client_auth.contains_key(&port) && !compiled.ports.contains_key(&18448));

    let pools = StaticPools::default().with("shop", "web", 80, http_backend("web").await, AppProtocol::Http1);
    let gateway = RunningGateway::start(compiled, pools, own_loopback(7)).await;
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let ca_file = write("ca.pem", ca.pem().as_bytes());
    let client = ca.issue(&["client.example.com"]).pem;
    let (client_crt, client_key) = (write("client.crt", &client.chain), write("client.key", &client.key));
    let other = stranger.issue(&["client.example.com"]).pem;
    let (other_crt, other_key) = (write("other.crt", &other.chain), write("other.key", &other.key));
    let resolve = format!("shop.example.com:{port}:{}", gateway.ip);
    let url = format!("https://shop.example.com:{port}/");
    let base = ["--cacert", ca_file.as_str(), "--resolve", resolve.as_str(), "-w", " %{http_code}"];

    let (ok, out) = curl(&[&base[..], &["--cert", &client_crt, "--key", &client_key, &url]].concat()).await;
    assert!(ok && out.ends_with(" 200"), "with the CA's client certificate: {out}");
    let (ok, out) = curl(&[&base[..], &[url.as_str()]].concat()).await;
    assert!(!ok && !out.contains(" 200"), "without a client certificate: {out}");
    let (ok, out) = curl(&[&base[..], &["--cert", &other_crt, "--key", &other_key, &url]].concat()).await;
    assert!(!ok && !out.contains(" 200"), "with another CA's certificate: {out}");
    // Counted: one handshake done, two refused for their client certificate.
    let handshakes = |result: &str| format!("listener=\"shop/edge:{port}\",result=\"{result}\"");
    let total = "edgemesh_gateway_tls_handshakes_total";
    assert_eq!(gateway.metric_reaches(total, &handshakes("client_certificate"), 2.0).await, 2.0);
    assert_eq!(gateway.metric(total, &handshakes("ok")), 1.0);
}

/// A request whose Host belongs to another listener than the one the TLS
/// session's SNI chose is answered 421 on that connection (which stays
/// usable), over HTTP/1.1 and HTTP/2 (`:authority`), from curl (`--resolve`
/// and `--connect-to` with a Host that differs from the URL's name, the
/// SNI) and from a client reusing one session for several names (HTTP/2
/// connection coalescing under the wildcard certificate); a Host of the
/// session's own listener is served, and without SNI there is no check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_another_listeners_host_on_a_tls_session_is_misdirected() {
    let ca = Ca::new();
    let certs = MemoryCertificates::default();
    certs.set("shop", "shop-tls", ca.issue(&["shop.example.com"]).pem);
    certs.set("shop", "wild-tls", ca.issue(&["*.example.com"]).pem);
    certs.set("shop", "default-tls", ca.issue(&["default.test", "other.test"]).pem);
    let port = 18444;
    let compiled = Loaded::parse(&objects(port)).compile(&[("shop/web", 80)], &certs);
    let pools = StaticPools::default().with("shop", "web", 80, http_backend("web").await, AppProtocol::Http1);
    let gateway = RunningGateway::start(compiled, pools, own_loopback(3)).await;
    let ip = gateway.ip;

    // One session, SNI cart.example.com (the wildcard listener, whose
    // certificate also covers shop.example.com): its own names are served,
    // shop.example.com (its own listener) and the default listener's are 421.
    let client = ca.client();
    let (mut session, _) = tls_connect(&client, gateway.addr(port), "cart.example.com").await.unwrap();
    for (host, want) in [
        ("cart.example.com", 200),
        ("other.example.com", 200),
        (&format!("Cart.Example.com:{port}") as &str, 200),
        ("shop.example.com", 421),
        ("default.test", 421),
        ("cart.example.com", 200),
    ] {
        let (status, body) = get(&mut session, host, "/").await.unwrap();
        assert_eq!(status, want, "{host}: {body}");
        if want == 421 {
            assert!(body.contains("server name cart.example.com") && body.contains("new connection"), "{body}");
        }
    }
    // A session made for the default listener (a name no other covers)
    // serves names only it covers.
    let (mut session, _) = tls_connect(&client, gateway.addr(port), "default.test").await.unwrap();
    assert_eq!(get(&mut session, "other.test", "/").await.unwrap().0, 200);
    assert_eq!(get(&mut session, "cart.example.com", "/").await.unwrap().0, 421);

    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let ca_arg = ca_file.to_str().unwrap();
    let resolve = format!("cart.example.com:{port}:{ip}");
    let connect_to = format!("shop.example.com:{port}:{ip}:{port}");
    let cart = format!("https://cart.example.com:{port}/");
    let shop = format!("https://shop.example.com:{port}/");
    let out = "%{http_code} %{http_version}";
    for (version, want_version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let cases: [(&[&str], &str, &str); 4] = [
            (&["--resolve", &resolve, &cart], "cart.example.com", "200"),
            (&["--resolve", &resolve, &cart], "shop.example.com", "421"),
            (&["--connect-to", &connect_to, &shop], "shop.example.com", "200"),
            (&["--connect-to", &connect_to, &shop], "cart.example.com", "421"),
        ];
        for (args, host, want) in cases {
            let host_header = format!("Host: {host}");
            let common = ["--cacert", ca_arg, version, "-o", "/dev/null", "-w", out, "-H", &host_header];
            let (ok, text) = curl(&[&common[..], args].concat()).await;
            assert!(ok, "{version} {args:?} Host {host}: {text}");
            assert_eq!(text, format!("{want} {want_version}"), "{version} {args:?} Host {host}");
        }
    }
    // No SNI (curl sends none for an address): nothing to compare, routed
    // by the Host as before.
    let (ok, text) =
        curl(&["-k", "-H", "Host: shop.example.com", "-w", " %{http_code}", &format!("https://{ip}:{port}/")]).await;
    assert!(ok && text.ends_with(" 200"), "{text}");

    // HTTP/2 connection coalescing: one h2 session for cart.example.com,
    // then a stream for shop.example.com on it.
    let statuses = h2_on_one_session(
        &ca,
        gateway.addr(port),
        "cart.example.com",
        port,
        &["cart.example.com", "shop.example.com", "x.example.com"],
    )
    .await;
    assert_eq!(statuses, [200, 421, 200]);
}

/// One HTTP/2 session (ALPN h2) for server name `sni`, and a GET for each
/// of `hosts` on it (`:authority` host:port); their statuses.
async fn h2_on_one_session(ca: &Ca, addr: std::net::SocketAddr, sni: &str, port: u16, hosts: &[&str]) -> Vec<u16> {
    let tls = ca.client_config_with_alpn(&[b"h2"]);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let session = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.unwrap();
    assert_eq!(session.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let io = hyper_util::rt::TokioIo::new(session);
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(conn);
    let mut statuses = Vec::new();
    for host in hosts {
        let req = hyper::Request::get(format!("https://{host}:{port}/"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        statuses.push(sender.send_request(req).await.unwrap().status().as_u16());
    }
    statuses
}

/// Every TLS handshake on an HTTPS port is counted by how it ended, and
/// the completed ones' durations observed: completed (curl, rustls), a
/// name no listener has a certificate for, a client that does not trust
/// the certificate (its alert), plain HTTP to the port, a connection closed
/// before its ClientHello, and one that sends nothing until the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshakes_are_counted_by_how_they_ended() {
    let ca = Ca::new();
    let certs = MemoryCertificates::default();
    certs.set("shop", "shop-tls", ca.issue(&["shop.example.com"]).pem);
    certs.set("shop", "wild-tls", ca.issue(&["*.example.com"]).pem);
    let port = 18449;
    // No listener without hostname: a name outside *.example.com has no certificate.
    let yaml = objects(port).replace(
        &format!(
            "  - {{name: default, port: {port}, protocol: HTTPS, tls: {{certificateRefs: [{{name: default-tls}}]}}}}\n"
        ),
        "",
    );
    assert!(!yaml.contains("default-tls"));
    let compiled = Loaded::parse(&yaml).compile(&[("shop/web", 80)], &certs);
    let pools = StaticPools::default().with("shop", "web", 80, http_backend("web").await, AppProtocol::Http1);
    let gateway = RunningGateway::start(compiled, pools, own_loopback(9)).await;
    let ip = gateway.ip;
    let addr = gateway.addr(port);
    let handshakes = |result: &str| format!("listener=\"shop/edge:{port}\",result=\"{result}\"");
    let total = "edgemesh_gateway_tls_handshakes_total";
    // Before any: no series for the port.
    assert_eq!(gateway.metric(total, &handshakes("ok")), 0.0);

    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let resolve = format!("shop.example.com:{port}:{ip}");
    let (ok, out) = curl(&[
        "--cacert",
        ca_file.to_str().unwrap(),
        "--resolve",
        &resolve,
        &format!("https://shop.example.com:{port}/"),
    ])
    .await;
    assert!(ok, "{out}");
    let (mut session, _) = tls_connect(&ca.client_without_resumption(), addr, "cart.example.com").await.unwrap();
    assert_eq!(get(&mut session, "cart.example.com", "/").await.unwrap().0, 200);
    assert_eq!(gateway.metric_reaches(total, &handshakes("ok"), 2.0).await, 2.0);

    // A name no listener covers.
    assert!(tls_connect(&ca.client(), addr, "other.test").await.is_err());
    assert_eq!(gateway.metric_reaches(total, &handshakes("no_certificate"), 1.0).await, 1.0);
    // A client of another CA refuses the certificate with an alert.
    assert!(tls_connect(&Ca::new().client(), addr, "shop.example.com").await.is_err());
    assert_eq!(gateway.metric_reaches(total, &handshakes("rejected"), 1.0).await, 1.0);
    // Plain HTTP to the HTTPS port.
    let (ok, _) = curl(&[&format!("http://{ip}:{port}/")]).await;
    assert!(!ok);
    assert_eq!(gateway.metric_reaches(total, &handshakes("protocol"), 1.0).await, 1.0);
    // A TCP connection closed without a byte (a port scan, a health check).
    drop(tokio::net::TcpStream::connect(addr).await.unwrap());
    assert_eq!(gateway.metric_reaches(total, &handshakes("closed"), 1.0).await, 1.0);
    // One that sends nothing: the handshake timeout.
    let silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(support::net::HANDSHAKE_TIMEOUT).await;
    assert_eq!(gateway.metric_reaches(total, &handshakes("timeout"), 1.0).await, 1.0);
    drop(silent);

    // Nothing counted twice or elsewhere; the completed ones timed.
    for (result, want) in [
        ("ok", 2.0),
        ("no_certificate", 1.0),
        ("client_certificate", 0.0),
        ("rejected", 1.0),
        ("protocol", 1.0),
        ("closed", 1.0),
        ("timeout", 1.0),
    ] {
        assert_eq!(gateway.metric(total, &handshakes(result)), want, "{result}");
    }
    let listener = format!("listener=\"shop/edge:{port}\"");
    assert_eq!(gateway.metric("edgemesh_gateway_tls_handshake_seconds_count", &listener), 2.0);
    let sum = gateway.metric("edgemesh_gateway_tls_handshake_seconds_sum", &listener);
    assert!(sum > 0.0 && sum < 2.0, "{sum}");
}
