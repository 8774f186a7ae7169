//! Inbound stream limits (issue #18), with real swarms on loopback: a peer over
//! `tunnel.maxInboundStreamsPerPeer`, or any peer once `tunnel.maxInboundStreams` are held,
//! gets a `Busy` reply on the extra streams while the streams it holds keep working, other
//! peers keep being served, and every refusal is counted.

mod common;

use std::{sync::Arc, time::Duration};

use common::*;
use edgemesh_metrics::AgentRegistry;
use edgemesh_tunnel::{TunnelConfig, TunnelError, TunnelProtocol};

const PER_PEER: &str = r#"edgemesh_tunnel_limit_hits_total{limit="inbound_streams_per_peer"}"#;
const TOTAL: &str = r#"edgemesh_tunnel_limit_hits_total{limit="inbound_streams"}"#;

/// B (limited by `limit`, metered) serving a TCP echo, with A and C bootstrapped from it.
async fn three_nodes(keys: &Keys, limit: impl FnOnce(&mut TunnelConfig)) -> (Node, Node, Node, AgentRegistry) {
    let dir = Arc::new(TestDirectory::default());
    for n in ["a", "b", "c"] {
        dir.bind(n, keys.peer(n));
    }
    let mut cb = config(keys, "b");
    limit(&mut cb);
    let (b, registry) = start_metered(cb, dir.clone()).await;
    let mut others = Vec::new();
    for n in ["a", "c"] {
        let mut c = config(keys, n);
        c.bootstrap = vec![b.addr()];
        others.push(start(c, dir.clone()).await);
    }
    let c = others.pop().unwrap();
    let a = others.pop().unwrap();
    (a, b, c, registry)
}

fn assert_busy(result: Result<impl Sized, TunnelError>) {
    match result {
        Err(TunnelError::Busy { node }) => assert_eq!(node, "b"),
        Err(e) => panic!("expected a Busy refusal, got {e}"),
        Ok(_) => panic!("expected a Busy refusal, the stream was opened"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_over_its_limit_is_refused_while_its_streams_and_other_peers_are_served() {
    init_tracing();
    let keys = Keys::new();
    let (a, b, c, registry) = three_nodes(&keys, |cb| cb.max_inbound_streams_per_peer = 3).await;
    let echo = tcp_echo().await;
    let udp = udp_echo().await;
    b.dir.serve(echo, TunnelProtocol::Tcp);
    b.dir.serve(udp, TunnelProtocol::Udp);
    assert_eq!(sample(&registry, PER_PEER), 0.0, "the series exists from the start");

    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(a.tunnel.open_tcp("b", echo, "limited").await.expect("within a's limit"));
    }
    // The fourth stream, TCP or UDP, is refused with a reply: no hang, no lost connection.
    assert_busy(a.tunnel.open_tcp("b", echo, "limited").await);
    assert_busy(a.tunnel.open_udp("b", udp, "limited").await);
    assert_eq!(sample(&registry, PER_PEER), 2.0);
    assert_eq!(sample(&registry, TOTAL), 0.0);
    // A's first streams keep working, and C is served as before.
    for s in &mut held {
        round_trip(s).await;
    }
    round_trip(&mut c.tunnel.open_tcp("b", echo, "other peer").await.expect("c is under its own limit")).await;

    // A closes one: its slot comes back once b has finished with it.
    drop(held.pop());
    let mut again = eventually("a gets a stream again", Duration::from_secs(5), || async {
        a.tunnel.open_tcp("b", echo, "limited").await.ok()
    })
    .await;
    round_trip(&mut again).await;
    for s in &mut held {
        round_trip(s).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_total_every_peer_is_refused_until_a_stream_ends() {
    init_tracing();
    let keys = Keys::new();
    let (a, b, c, registry) = three_nodes(&keys, |cb| cb.max_inbound_streams = 4).await;
    let echo = tcp_echo().await;
    b.dir.serve(echo, TunnelProtocol::Tcp);

    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(a.tunnel.open_tcp("b", echo, "busy").await.expect("under the total"));
    }
    let mut c_held = c.tunnel.open_tcp("b", echo, "busy").await.expect("the fourth of the total");
    assert_busy(c.tunnel.open_tcp("b", echo, "busy").await);
    assert_busy(a.tunnel.open_tcp("b", echo, "busy").await);
    assert_eq!(sample(&registry, TOTAL), 2.0);
    assert_eq!(sample(&registry, PER_PEER), 0.0);
    round_trip(&mut c_held).await;
    for s in &mut held {
        round_trip(s).await;
    }

    // One of A's ends: C (another peer) gets the free slot.
    drop(held.pop());
    let mut freed = eventually("c gets the freed slot", Duration::from_secs(5), || async {
        c.tunnel.open_tcp("b", echo, "busy").await.ok()
    })
    .await;
    round_trip(&mut freed).await;
}
