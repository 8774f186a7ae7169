//! Test certificates made with the real `openssl` command: self-signed
//! ones, and a CA with certificates it signed (servers and clients).

use std::path::Path;

/// Runs openssl with `args` in `dir`; panics with its output on failure.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl").current_dir(dir).args(args).output().expect("openssl is installed");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// An ECDSA P-256 key, unencrypted: `openssl req`'s key arguments.
const EC_KEY: [&str; 5] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

/// A self-signed certificate for `host` (the host as DNS SAN), written as
/// `<stem>.crt` and `<stem>.key` in `dir`.
pub fn self_signed(dir: &Path, stem: &str, host: &str) {
    let (crt, key) = (format!("{stem}.crt"), format!("{stem}.key"));
    let names = ["-subj", &format!("/CN={host}"), "-addext", &format!("subjectAltName=DNS:{host}")];
    openssl(dir, &[&["req", "-x509", "-days", "2"][..], &EC_KEY, &names, &["-keyout", &key, "-out", &crt]].concat());
}

/// A test CA in `dir` (`ca.crt`, `ca.key`) and a certificate it signed for
/// each of `names` (`<name>.crt`, `<name>.key`, the name as DNS SAN).
pub fn ca_and_certificates(dir: &Path, names: &[&str]) {
    let ca = ["-days", "2", "-subj", "/CN=test CA", "-keyout", "ca.key", "-out", "ca.crt"];
    openssl(dir, &[&["req", "-x509"][..], &EC_KEY, &ca].concat());
    for name in names {
        let (key, csr, crt, ext) =
            (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"), format!("{name}.ext"));
        std::fs::write(dir.join(&ext), format!("subjectAltName=DNS:{name}\n")).unwrap();
        openssl(
            dir,
            &[&["req"][..], &EC_KEY, &["-subj", &format!("/CN={name}"), "-keyout", &key, "-out", &csr]].concat(),
        );
        let sign = ["x509", "-req", "-in", &csr, "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2"];
        openssl(dir, &[&sign[..], &["-extfile", &ext, "-out", &crt]].concat());
    }
}
