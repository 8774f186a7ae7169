//! The PSK proof: what it accepts and what it refuses, and its exchange over real sockets.

use futures::AsyncWriteExt;
use tokio_util::compat::TokioAsyncReadCompatExt;

use super::*;

fn key(byte: u8) -> Psk {
    Psk::new([byte; 32])
}

const EXPORTER: [u8; 32] = [9; 32];

#[test]
fn the_right_key_is_accepted_for_the_other_role_only() {
    let k = key(1);
    let b = Binding::Tls(&EXPORTER);
    let dialer = k.proof(Role::Dialer, b);
    k.verify(Role::Dialer, b, &dialer).expect("the dialer's proof checks as the dialer's");
    // Reflected: the dialer's own proof sent back as the listener's is refused.
    assert!(k.verify(Role::Listener, b, &dialer).is_err());
    assert_ne!(dialer, k.proof(Role::Listener, b));
}

#[test]
fn a_wrong_key_another_session_or_a_truncated_proof_is_refused() {
    let (k, other) = (key(1), key(2));
    let b = Binding::Tls(&EXPORTER);
    let theirs = other.proof(Role::Dialer, b);
    assert!(k.verify(Role::Dialer, b, &theirs).is_err(), "another key");
    // A proof taken from another TLS session (relayed by a man in the middle).
    let elsewhere = k.proof(Role::Dialer, Binding::Tls(&[8; 32]));
    assert!(k.verify(Role::Dialer, b, &elsewhere).is_err(), "another session");
    let good = k.proof(Role::Dialer, b);
    assert!(k.verify(Role::Dialer, b, &good[..31]).is_err(), "truncated");
}

#[test]
fn noise_proofs_name_who_dialed_whom() {
    let k = key(1);
    let (a, m) = (PeerId::random(), PeerId::random());
    let a_dials_m = Binding::Noise { dialer: &a, listener: &m };
    let m_dials_a = Binding::Noise { dialer: &m, listener: &a };
    // What a sends as listener when m dials it is of no use to m dialing a, nor to m being
    // dialed by a.
    let a_listening = k.proof(Role::Listener, m_dials_a);
    assert!(k.verify(Role::Dialer, m_dials_a, &a_listening).is_err());
    assert!(k.verify(Role::Listener, a_dials_m, &a_listening).is_err());
    // TLS and Noise proofs never coincide either.
    assert!(k.verify(Role::Listener, Binding::Tls(&EXPORTER), &a_listening).is_err());
}

#[test]
fn swarm_key_files_parse_and_bad_ones_say_why() {
    let hex = "ab".repeat(32);
    let a = Psk::parse(&format!("/key/swarm/psk/1.0.0/\n/base16/\n{hex}\n")).unwrap();
    let b = Psk::parse(&format!("\n/key/swarm/psk/1.0.0/\r\n/base16/\r\n{hex}")).unwrap();
    let binding = Binding::Tls(&EXPORTER);
    assert_eq!(a.proof(Role::Dialer, binding), b.proof(Role::Dialer, binding), "the same key");
    assert_eq!(a.proof(Role::Dialer, binding), key(0xab).proof(Role::Dialer, binding));
    for (text, why) in [
        ("/key/swarm/psk/2.0.0/\n/base16/\nab".to_owned(), "first line"),
        ("/key/swarm/psk/1.0.0/\n/base64/\nab".to_owned(), "/base64/"),
        ("/key/swarm/psk/1.0.0/\n".to_owned(), "missing"),
        (format!("/key/swarm/psk/1.0.0/\n/base16/\n{}", "ab".repeat(31)), "62 hex digits"),
        (format!("/key/swarm/psk/1.0.0/\n/base16/\nzz{}", "ab".repeat(31)), "\"zz\""),
    ] {
        let e = Psk::parse(&text).unwrap_err();
        assert!(e.contains(why), "{text:?}: {e}");
    }
    assert_eq!(format!("{a:?}"), "Psk(..)", "the key is never printed");
}

async fn tcp_pair()
-> (tokio_util::compat::Compat<tokio::net::TcpStream>, tokio_util::compat::Compat<tokio::net::TcpStream>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (d, a) = tokio::join!(tokio::net::TcpStream::connect(l.local_addr().unwrap()), l.accept());
    (d.unwrap().compat(), a.unwrap().0.compat())
}

#[tokio::test]
async fn the_exchange_over_tcp_passes_with_one_key_and_fails_on_both_sides_with_two() {
    let b = Binding::Tls(&EXPORTER);
    let (mut d, mut l) = tcp_pair().await;
    let (k1, k2) = (key(1), key(1));
    let (rd, rl) = tokio::join!(k1.exchange(&mut d, Role::Dialer, b), k2.exchange(&mut l, Role::Listener, b));
    rd.unwrap();
    rl.unwrap();

    let (mut d, mut l) = tcp_pair().await;
    let (k1, k2) = (key(1), key(2));
    let (rd, rl) = tokio::join!(k1.exchange(&mut d, Role::Dialer, b), k2.exchange(&mut l, Role::Listener, b));
    assert!(matches!(rd, Err(ProofError::Refused(_))), "{rd:?}");
    assert!(matches!(rl, Err(ProofError::Refused(_))), "{rl:?}");

    // Both sides claiming to be the dialer (a reflected proof): refused.
    let (mut d, mut l) = tcp_pair().await;
    let (k1, k2) = (key(1), key(1));
    let (rd, rl) = tokio::join!(k1.exchange(&mut d, Role::Dialer, b), k2.exchange(&mut l, Role::Dialer, b));
    assert!(matches!(rd, Err(ProofError::Refused(_))) && matches!(rl, Err(ProofError::Refused(_))));

    // A peer that closes without a proof: an I/O error, not a hang.
    let (mut d, mut l) = tcp_pair().await;
    l.close().await.unwrap();
    drop(l);
    let r = key(1).exchange(&mut d, Role::Dialer, b).await;
    assert!(matches!(r, Err(ProofError::Io(_))), "{r:?}");
}

#[test]
fn a_refusal_is_found_under_the_transports_wrappers() {
    let wrapped = std::io::Error::other(ProofError::Refused(Refused));
    assert!(is_refusal(&wrapped));
    let twice = std::io::Error::other(libp2p::core::transport::TransportError::<std::io::Error>::Other(wrapped));
    assert!(is_refusal(&twice));
    let other = std::io::Error::other(ProofError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    assert!(!is_refusal(&other));
}
