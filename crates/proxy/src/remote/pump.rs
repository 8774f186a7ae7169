//! Datagram sessions over a transport that sends and receives one datagram
//! at a time (the tunnel's UDP streams): two tasks pump between the
//! proxy's channels ([`RemoteDatagrams`]) and the transport's halves.

use std::future::Future;
use std::io;

use tokio::sync::mpsc;

use super::RemoteDatagrams;

/// The sending half of a transport's datagram session.
pub trait DatagramSend: Send + 'static {
    fn send(&mut self, datagram: &[u8]) -> impl Future<Output = io::Result<()>> + Send;
    /// Ends the session in this direction (the proxy's session ended).
    fn close(&mut self) -> impl Future<Output = io::Result<()>> + Send;
}

/// The receiving half of a transport's datagram session.
pub trait DatagramRecv: Send + 'static {
    /// One datagram into `buf`; an error ends the session.
    fn recv(&mut self, buf: &mut [u8]) -> impl Future<Output = io::Result<usize>> + Send;
}

impl RemoteDatagrams {
    /// Spawns the two pumps of one session: `queue` datagrams are buffered
    /// each way, and datagrams of up to `max_datagram` bytes are received.
    /// Each pump ends when its side closes: the proxy dropping its sender
    /// closes the transport's sending half; the transport failing or ending
    /// ends `from_remote`.
    pub fn pump(
        mut sender: impl DatagramSend,
        mut receiver: impl DatagramRecv,
        max_datagram: usize,
        queue: usize,
    ) -> Self {
        let (to_remote, mut outbound) = mpsc::channel::<Vec<u8>>(queue);
        let (inbound, from_remote) = mpsc::channel(queue);
        tokio::spawn(async move {
            while let Some(datagram) = outbound.recv().await {
                if sender.send(&datagram).await.is_err() {
                    return;
                }
            }
            let _ = sender.close().await;
        });
        tokio::spawn(async move {
            let mut buf = vec![0u8; max_datagram];
            loop {
                let n = tokio::select! {
                    r = receiver.recv(&mut buf) => match r {
                        Ok(n) => n,
                        Err(_) => return,
                    },
                    () = inbound.closed() => return,
                };
                if inbound.send(buf[..n].to_vec()).await.is_err() {
                    return;
                }
            }
        });
        Self { to_remote, from_remote }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::net::UdpSocket;

    use super::*;

    /// A connected UDP socket as a transport: closing sends an empty datagram.
    struct Udp(Arc<UdpSocket>);

    impl DatagramSend for Udp {
        async fn send(&mut self, datagram: &[u8]) -> io::Result<()> {
            self.0.send(datagram).await.map(drop)
        }
        async fn close(&mut self) -> io::Result<()> {
            self.0.send(b"").await.map(drop)
        }
    }

    impl DatagramRecv for Udp {
        async fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.recv(buf).await
        }
    }

    #[tokio::test]
    async fn datagrams_pass_both_ways_and_dropping_the_sender_closes_the_session() {
        let (ours, theirs) =
            (UdpSocket::bind("127.0.0.1:0").await.unwrap(), UdpSocket::bind("127.0.0.1:0").await.unwrap());
        ours.connect(theirs.local_addr().unwrap()).await.unwrap();
        theirs.connect(ours.local_addr().unwrap()).await.unwrap();
        let ours = Arc::new(ours);
        let RemoteDatagrams { to_remote, mut from_remote } =
            RemoteDatagrams::pump(Udp(ours.clone()), Udp(ours), 65_535, 4);

        let big = vec![7u8; 60_000];
        to_remote.send(big.clone()).await.unwrap();
        let mut buf = vec![0u8; 65_535];
        let n = theirs.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], &big[..], "a large datagram passes whole");
        theirs.send(b"reply").await.unwrap();
        assert_eq!(from_remote.recv().await.as_deref(), Some(&b"reply"[..]));

        drop(to_remote);
        let n = theirs.recv(&mut buf).await.unwrap();
        assert_eq!(n, 0, "the transport's sending half is closed when the proxy ends the session");
        drop(from_remote);
    }
}
