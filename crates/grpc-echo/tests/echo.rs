//! The echo server and client against each other on loopback: every
//! method, its replies in order, and the trailer naming the server.

use std::time::Duration;

use edgemesh_grpc_echo::{Client, Server};

fn server(name: &str) -> Server {
    Server::start(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), name)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn every_method_answers_in_order_and_ends_with_the_trailer() {
    let server = server("echo-a");
    runtime().block_on(async {
        let call = async {
            let mut client = Client::connect(server.addr).await.unwrap();
            let unary = client.unary("hello").await.unwrap();
            assert_eq!(unary.trailer, "echo-a");
            assert_eq!((unary.replies[0].message.as_str(), unary.replies[0].server.as_str()), ("hello", "echo-a"));

            let stream = client.server_stream("tick", 100).await.unwrap();
            assert_eq!(stream.trailer, "echo-a");
            assert_eq!(stream.replies.iter().map(|r| r.index).collect::<Vec<_>>(), (0..100).collect::<Vec<_>>());

            let bidi = client.bidi(&["one", "two", "three"]).await.unwrap();
            assert_eq!(bidi.trailer, "echo-a");
            assert_eq!(bidi.replies.iter().map(|r| r.message.as_str()).collect::<Vec<_>>(), ["one", "two", "three"]);
            assert!(bidi.replies.iter().enumerate().all(|(i, r)| usize::try_from(r.index) == Ok(i)));
        };
        tokio::time::timeout(Duration::from_secs(20), call).await.expect("the calls finish");
    });
    assert_eq!(server.calls(), 3);
}

#[test]
fn a_stopped_server_is_an_error_not_a_hang() {
    let server = server("echo-b");
    let addr = server.addr;
    drop(server);
    runtime().block_on(async {
        let outcome = tokio::time::timeout(Duration::from_secs(10), Client::connect(addr)).await.expect("bounded");
        assert!(outcome.is_err(), "connected to a stopped server");
    });
}
