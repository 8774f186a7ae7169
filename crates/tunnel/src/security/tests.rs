//! The security upgrades negotiated over real loopback TCP, between agents offering TLS and
//! Noise, agents offering Noise only (before TLS), and stock libp2p-tls.

use futures::{AsyncReadExt, AsyncWriteExt, future::Either};
use libp2p::{PeerId, core::upgrade::Version, identity::Keypair, noise};
use multistream_select::{dialer_select_proto, listener_select_proto};
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

use super::*;

fn security(key: &Keypair, tls: bool) -> Security {
    let tls = tls.then(|| tls::Config::new(key).unwrap());
    Security::new(tls, noise::Config::new(key).unwrap())
}

async fn tcp_pair() -> (Compat<tokio::net::TcpStream>, Compat<tokio::net::TcpStream>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (dialer, accepted) = tokio::join!(tokio::net::TcpStream::connect(l.local_addr().unwrap()), l.accept());
    (dialer.unwrap().compat(), accepted.unwrap().0.compat())
}

/// What each side learned: the protocol, the remote peer, and the secured streams.
struct Negotiated<C> {
    protocol: &'static str,
    dialer_saw: PeerId,
    listener_saw: PeerId,
    dialer: Secured<C>,
    listener: Secured<C>,
}

/// multistream-select then the chosen upgrade, as the TCP transport does.
async fn negotiate(
    dialer: Security,
    listener: Security,
) -> Result<Negotiated<multistream_select::Negotiated<Compat<tokio::net::TcpStream>>>, SecurityError> {
    let (d, l) = tcp_pair().await;
    // Each side's negotiation and handshake in one future: with `V1Lazy` the dialer's last
    // proposal is only sent with its first handshake message.
    let dialing = async {
        let (protocol, io) = dialer_select_proto(d, dialer.protocol_info(), Version::V1Lazy).await.unwrap();
        dialer.upgrade_outbound(io, protocol).await.map(|r| (protocol, r))
    };
    let listening = async {
        let (protocol, io) = listener_select_proto(l, listener.protocol_info()).await.unwrap();
        listener.upgrade_inbound(io, protocol).await.map(|r| (protocol, r))
    };
    let (d, l) = tokio::join!(dialing, listening);
    let ((protocol, (dialer_saw, dialer)), (lproto, (listener_saw, listener))) = (d?, l?);
    assert_eq!(protocol, lproto);
    Ok(Negotiated { protocol, dialer_saw, listener_saw, dialer, listener })
}

/// Bytes written on one side arrive on the other, both ways.
async fn exchange(
    a: &mut (impl futures::AsyncRead + futures::AsyncWrite + Unpin),
    b: &mut (impl futures::AsyncRead + futures::AsyncWrite + Unpin),
) {
    let big = vec![7u8; 200_000];
    let (w, r) = tokio::join!(async { a.write_all(&big).await.and(a.flush().await) }, async {
        let mut got = vec![0u8; big.len()];
        b.read_exact(&mut got).await.map(|_| got)
    });
    w.unwrap();
    assert_eq!(r.unwrap(), big);
    b.write_all(b"back").await.unwrap();
    b.flush().await.unwrap();
    let mut four = [0u8; 4];
    a.read_exact(&mut four).await.unwrap();
    assert_eq!(&four, b"back");
}

fn cipher<C>(s: &Secured<C>) -> rustls::CipherSuite {
    match s {
        Either::Left(tls) => tls.get_ref().get_ref().1.negotiated_cipher_suite().unwrap().suite(),
        Either::Right(_) => panic!("Noise, not TLS"),
    }
}

#[tokio::test]
async fn new_agents_pick_tls_with_aes_gcm_and_learn_each_others_peer_id() {
    let (a, b) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let mut n = negotiate(security(&a, true), security(&b, true)).await.unwrap();
    assert_eq!(n.protocol, tls::PROTOCOL);
    assert_eq!(n.dialer_saw, b.public().to_peer_id());
    assert_eq!(n.listener_saw, a.public().to_peer_id());
    if tls::aes_in_hardware() {
        assert_eq!(cipher(&n.dialer), rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    }
    exchange(&mut n.dialer, &mut n.listener).await;
}

#[tokio::test]
async fn old_and_new_agents_agree_on_noise_either_way() {
    let (a, b) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    for (dialer_tls, listener_tls) in [(true, false), (false, true), (false, false)] {
        let mut n = negotiate(security(&a, dialer_tls), security(&b, listener_tls)).await.unwrap();
        assert_eq!(n.protocol, "/noise", "dialer TLS {dialer_tls}, listener TLS {listener_tls}");
        assert!(matches!(n.dialer, Either::Right(_)));
        assert_eq!(n.dialer_saw, b.public().to_peer_id());
        assert_eq!(n.listener_saw, a.public().to_peer_id());
        exchange(&mut n.dialer, &mut n.listener).await;
    }
}

/// Stock libp2p-tls (which prefers ChaCha20) and ours speak the same `/tls/1.0.0`; our server
/// still picks AES-128-GCM.
#[tokio::test]
async fn stock_libp2p_tls_interoperates_both_ways() {
    use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade};
    let (a, b) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let stock = libp2p::tls::Config::new(&a).unwrap();

    let (d, l) = tcp_pair().await;
    let (d, l) = tokio::join!(
        stock.clone().upgrade_outbound(d, "/tls/1.0.0"),
        security(&b, true).upgrade_inbound(l, tls::PROTOCOL)
    );
    let ((dialer_saw, mut d), (listener_saw, l)) = (d.unwrap(), l.unwrap());
    assert_eq!((dialer_saw, listener_saw), (b.public().to_peer_id(), a.public().to_peer_id()));
    if tls::aes_in_hardware() {
        assert_eq!(cipher(&l), rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    }
    let mut l = match l {
        Either::Left(s) => s,
        Either::Right(_) => unreachable!(),
    };
    exchange(&mut d, &mut l).await;

    let (d, l) = tcp_pair().await;
    let (d, l) =
        tokio::join!(security(&b, true).upgrade_outbound(d, tls::PROTOCOL), stock.upgrade_inbound(l, "/tls/1.0.0"));
    let ((dialer_saw, d), (listener_saw, mut l)) = (d.unwrap(), l.unwrap());
    assert_eq!((dialer_saw, listener_saw), (a.public().to_peer_id(), b.public().to_peer_id()));
    let mut d = match d {
        Either::Left(s) => s,
        Either::Right(_) => unreachable!(),
    };
    exchange(&mut d, &mut l).await;
}

/// A peer that is not a TLS peer at all (garbage instead of a ClientHello) is an error, not a
/// hang or a crash.
#[tokio::test]
async fn garbage_instead_of_a_handshake_is_an_error() {
    let (d, l) = tcp_pair().await;
    let b = Keypair::generate_ed25519();
    let listener = security(&b, true).upgrade_inbound(l, tls::PROTOCOL);
    let mut d = d;
    d.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]).await.unwrap();
    d.close().await.unwrap();
    let r = tokio::time::timeout(std::time::Duration::from_secs(5), listener).await.expect("bounded");
    assert!(matches!(r, Err(SecurityError::Tls(tls::TlsError::Handshake(_)))), "{:?}", r.err());
}

fn with_psk(key: &Keypair, tls: bool, byte: u8) -> Security {
    security(key, tls).with_psk(crate::psk::Psk::new([byte; 32]), key.public().to_peer_id())
}

/// With one key the upgrades run under their PSK names, over TLS and over Noise (an agent
/// with `tunnel.tls: false` on either side), and carry data after the proof.
#[tokio::test]
async fn one_psk_connects_over_tls_and_noise_under_the_psk_names() {
    let (a, b) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    for (dialer_tls, listener_tls, expected) in [
        (true, true, crate::psk::TLS_PROTOCOL),
        (true, false, crate::psk::NOISE_PROTOCOL),
        (false, true, crate::psk::NOISE_PROTOCOL),
    ] {
        let mut n = negotiate(with_psk(&a, dialer_tls, 7), with_psk(&b, listener_tls, 7)).await.unwrap();
        assert_eq!(n.protocol, expected);
        assert_eq!((n.dialer_saw, n.listener_saw), (b.public().to_peer_id(), a.public().to_peer_id()));
        exchange(&mut n.dialer, &mut n.listener).await;
    }
}

/// Another key: both sides refuse the connection after the handshake, over TLS and Noise.
#[tokio::test]
async fn another_psk_is_refused_on_both_sides_over_tls_and_noise() {
    let (a, b) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    for tls in [true, false] {
        let (d, l) = tcp_pair().await;
        let (dialer, listener) = (with_psk(&a, tls, 7), with_psk(&b, tls, 8));
        let dialing = async {
            let (protocol, io) = dialer_select_proto(d, dialer.protocol_info(), Version::V1Lazy).await.unwrap();
            dialer.upgrade_outbound(io, protocol).await.map(|_| ())
        };
        let listening = async {
            let (protocol, io) = listener_select_proto(l, listener.protocol_info()).await.unwrap();
            listener.upgrade_inbound(io, protocol).await.map(|_| ())
        };
        let (d, l) = tokio::join!(dialing, listening);
        for (side, r) in [("dialer", d), ("listener", l)] {
            let e = r.err().unwrap_or_else(|| panic!("TLS {tls}: the {side} accepted another key"));
            assert!(crate::psk::is_refusal(&e), "TLS {tls}, {side}: {e}");
            assert!(e.to_string().contains("does not have this network's PSK"), "{e}");
        }
    }
}

/// A node without a PSK (or one still speaking pnet) and a node with one share no security
/// protocol: multistream-select fails, before any handshake.
#[tokio::test]
async fn a_node_without_a_psk_and_one_with_it_fail_in_negotiation() {
    let (a, b) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    for (dialer, listener) in [(security(&a, true), with_psk(&b, true, 7)), (with_psk(&a, true, 7), security(&b, true))]
    {
        let (d, l) = tcp_pair().await;
        let (d, l) = tokio::join!(
            dialer_select_proto(d, dialer.protocol_info(), Version::V1),
            listener_select_proto(l, listener.protocol_info())
        );
        let (Err(d), Err(l)) = (d, l) else { panic!("a keyless and a keyed node negotiated a protocol") };
        for e in [d, l] {
            assert!(is_negotiation_failure(&std::io::Error::other(e)), "told apart as a negotiation failure");
        }
    }
}
