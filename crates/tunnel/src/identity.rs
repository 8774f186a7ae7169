//! The node identity (Ed25519 key file) and the private-network key.

use std::{
    fs,
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::Path,
};

use libp2p::identity::Keypair;

use crate::{TunnelError, psk::Psk};

/// Loads the node's Ed25519 identity from `path`, or creates a random one there (mode 0600,
/// parent directories created with mode 0700) when the file does not exist.
///
/// The file holds the libp2p protobuf encoding of the private key (the format of go-libp2p's
/// `crypto.MarshalPrivateKey`). An existing file readable or writable by group or others, or
/// one that does not hold an Ed25519 key, is an error naming the file; it is never replaced.
pub fn load_or_create_identity(path: &Path) -> Result<Keypair, TunnelError> {
    let err = |message: String| TunnelError::Identity { path: path.to_owned(), message };
    match fs::symlink_metadata(path) {
        Ok(meta) => {
            let meta = if meta.file_type().is_symlink() {
                fs::metadata(path).map_err(|e| err(format!("cannot follow symlink: {e}")))?
            } else {
                meta
            };
            if !meta.is_file() {
                return Err(err("not a regular file".into()));
            }
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(err(format!(
                    "permissions {mode:04o} are too open (the private key must be readable by \
                     its owner only: chmod 600 {})",
                    path.display()
                )));
            }
            let bytes = fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
            let key = Keypair::from_protobuf_encoding(&bytes).map_err(|e| {
                err(format!("does not hold a libp2p private key ({e}); move it away to create a new identity"))
            })?;
            if key.key_type() != libp2p::identity::KeyType::Ed25519 {
                return Err(err(format!("holds a {:?} key, expected Ed25519", key.key_type())));
            }
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path),
        Err(e) => Err(err(format!("cannot stat: {e}"))),
    }
}

fn create(path: &Path) -> Result<Keypair, TunnelError> {
    let err = |message: String| TunnelError::Identity { path: path.to_owned(), message };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| err(format!("cannot create directory {}: {e}", dir.display())))?;
    }
    let key = Keypair::generate_ed25519();
    let bytes = key.to_protobuf_encoding().map_err(|e| err(format!("cannot encode the new key: {e}")))?;
    // Write a temporary file next to it and rename it into place: a crash never leaves a
    // half-written key behind, and a concurrent creator cannot be overwritten.
    let file_name = path.file_name().ok_or_else(|| err("not a file path".into()))?;
    let tmp = dir.join(format!(".{}.tmp.{}", file_name.to_string_lossy(), std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        // Fails if another process created the key meanwhile: then that one wins.
        fs::hard_link(&tmp, path)?;
        Ok(())
    };
    let result = write();
    let _ = fs::remove_file(&tmp);
    match result {
        Ok(()) => {
            if let Ok(d) = fs::File::open(dir) {
                let _ = d.sync_all();
            }
            tracing::info!(path = %path.display(), peer_id = %key.public().to_peer_id(), "created a new tunnel identity");
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create_identity(path),
        Err(e) => Err(err(format!("cannot create: {e}"))),
    }
}

/// Reads a go-libp2p `swarm.key` file. One that others can read (or a group or others can
/// write) is an error naming the file, its mode and the `chmod` that fixes it: whoever holds
/// the key is inside the private network. Kubernetes mounts secrets 0644 unless the volume
/// sets `defaultMode: 0400`.
pub(crate) fn load_psk(path: &Path) -> Result<Psk, TunnelError> {
    let err = |message: String| TunnelError::Psk { path: path.to_owned(), message };
    let meta = fs::metadata(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o026 != 0 {
        return Err(err(format!(
            "permissions {mode:04o} are too open (the pre-shared key must not be readable by others nor \
             writable by its group: chmod 600 {}; for a Kubernetes Secret volume set defaultMode: 0400)",
            path.display()
        )));
    }
    let text = fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
    Psk::parse(&text).map_err(|e| {
        err(format!("not a swarm key ({e}); expected \"/key/swarm/psk/1.0.0/\\n/base16/\\n<64 hex digits>\""))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_0600_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/tunnel.key");
        let k1 = load_or_create_identity(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777;
        assert_eq!(dmode, 0o700);
        let k2 = load_or_create_identity(&path).unwrap();
        assert_eq!(k1.public().to_peer_id(), k2.public().to_peer_id());
        // No temporary file left behind.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn loose_permissions_are_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tunnel.key");
        load_or_create_identity(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create_identity(&path).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("0644"), "{e}");
    }

    #[test]
    fn bad_content_is_an_error_and_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tunnel.key");
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap()
            .write_all(b"garbage")
            .unwrap();
        let e = load_or_create_identity(&path).unwrap_err();
        assert!(matches!(e, TunnelError::Identity { .. }));
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        assert_eq!(fs::read(&path).unwrap(), b"garbage");
        // A directory in the way is an error too.
        let e = load_or_create_identity(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn psk_parses_swarm_key_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("swarm.key");
        fs::write(&path, format!("/key/swarm/psk/1.0.0/\n/base16/\n{}\n", "ab".repeat(32))).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        load_psk(&path).unwrap();
        fs::write(&path, "/key/swarm/psk/1.0.0/\n/base16/\nzz\n").unwrap();
        let e = load_psk(&path).unwrap_err().to_string();
        assert!(e.contains("swarm.key"), "{e}");
    }

    #[test]
    fn a_psk_others_can_read_or_the_group_write_is_refused_naming_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("swarm.key");
        fs::write(&path, format!("/key/swarm/psk/1.0.0/\n/base16/\n{}\n", "ab".repeat(32))).unwrap();
        for mode in [0o644, 0o604, 0o620, 0o666] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let e = load_psk(&path).unwrap_err().to_string();
            let shown = format!("{mode:04o}");
            assert!(e.contains(&path.display().to_string()) && e.contains(&shown), "{e}");
            assert!(e.contains(&format!("chmod 600 {}", path.display())), "{e}");
        }
        // The owner's alone, or shared read-only with a group: fine.
        for mode in [0o600, 0o400, 0o640, 0o440] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            load_psk(&path).unwrap_or_else(|e| panic!("{mode:o}: {e}"));
        }
    }
}
