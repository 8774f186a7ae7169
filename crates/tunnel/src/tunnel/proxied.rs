//! What the tunnel hands out: [`TunnelStream`], a proxied TCP connection, and the two halves
//! of a UDP session, which carries length-prefixed datagrams on one stream.
//!
//! Each counts the payload it carries (bytes of a connection, datagrams' bodies: never the
//! header or the length prefixes) into its node's series as it goes ([`Metered`]).

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use edgemesh_metrics::Counter;
use libp2p::{PeerId, Stream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio_util::compat::Compat;

use crate::{metrics::NodeMeters, peer_table::StreamGuard};

/// The largest datagram a session carries (the length prefix is a u16).
pub const MAX_DATAGRAM: usize = u16::MAX as usize;

/// A proxied TCP connection through the tunnel.
///
/// `shutdown()` half-closes: the remote agent shuts down the write side of its connection to
/// the endpoint, and this stream can keep reading until the endpoint closes its side.
pub struct TunnelStream {
    io: Compat<Stream>,
    peer: PeerId,
    relayed: bool,
    metered: Metered,
}

/// An open proxy stream's place in the metrics: counted as open while this lives, and the
/// payload bytes each way.
pub(crate) struct Metered {
    _guard: StreamGuard,
    sent: Counter,
    received: Counter,
}

impl Metered {
    pub(crate) fn new(guard: StreamGuard, meters: &NodeMeters) -> Self {
        Metered { _guard: guard, sent: meters.sent.clone(), received: meters.received.clone() }
    }
}

impl TunnelStream {
    pub(super) fn new(io: Compat<Stream>, peer: PeerId, relayed: bool, metered: Metered) -> Self {
        TunnelStream { io, peer, relayed, metered }
    }

    /// The peer (agent) at the other end.
    pub fn peer_id(&self) -> PeerId {
        self.peer
    }

    /// Whether this stream runs over a relayed connection (no direct one existed when it was
    /// opened).
    pub fn is_relayed(&self) -> bool {
        self.relayed
    }
}

impl std::fmt::Debug for TunnelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelStream").field("peer", &self.peer).field("relayed", &self.relayed).finish_non_exhaustive()
    }
}

impl AsyncRead for TunnelStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.io).poll_read(cx, buf);
        self.metered.received.inc_by((buf.filled().len() - before) as u64);
        read
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            self.metered.sent.inc_by(n as u64);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

pub(super) fn datagram_pair(stream: Compat<Stream>, metered: Metered) -> (DatagramSender, DatagramReceiver) {
    let metered = Arc::new(metered);
    let (r, w) = tokio::io::split(stream);
    (
        DatagramSender { w, pending: Vec::new(), metered: metered.clone() },
        DatagramReceiver { r, len: [0; 2], len_filled: 0, body: Vec::new(), body_filled: 0, metered },
    )
}

/// The sending half of a UDP session.
pub struct DatagramSender {
    w: WriteHalf<Compat<Stream>>,
    /// Bytes of a frame not written yet (a cancelled `send` leaves its frame here).
    pending: Vec<u8>,
    metered: Arc<Metered>,
}

impl DatagramSender {
    /// Sends one datagram (at most 65,535 bytes). A cancelled call never corrupts the
    /// session: the rest of its frame is written by the next call (or by `close`).
    pub async fn send(&mut self, datagram: &[u8]) -> io::Result<()> {
        let Ok(len) = u16::try_from(datagram.len()) else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "datagram larger than 65535 bytes"));
        };
        if !self.pending.is_empty() {
            self.drain().await?;
        }
        self.pending.reserve(2 + datagram.len());
        self.pending.extend_from_slice(&len.to_be_bytes());
        self.pending.extend_from_slice(datagram);
        // Counted once queued: a cancelled call's frame is written by the next one.
        self.metered.sent.inc_by(datagram.len() as u64);
        self.drain().await
    }

    async fn drain(&mut self) -> io::Result<()> {
        while !self.pending.is_empty() {
            let n = self.w.write(&self.pending).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.pending.drain(..n);
        }
        self.w.flush().await
    }

    /// Ends the session in this direction (the remote sees end of stream).
    pub async fn close(&mut self) -> io::Result<()> {
        self.drain().await?;
        self.w.shutdown().await
    }
}

/// The receiving half of a UDP session.
pub struct DatagramReceiver {
    r: ReadHalf<Compat<Stream>>,
    len: [u8; 2],
    len_filled: usize,
    body: Vec<u8>,
    body_filled: usize,
    metered: Arc<Metered>,
}

impl DatagramReceiver {
    /// Receives one datagram into `buf` and returns its length; a datagram longer than `buf`
    /// is truncated (like `recv(2)`). `Ok(0)` is an empty datagram, never the end: the end of
    /// the session is an error of kind `UnexpectedEof`. Cancel-safe: a cancelled call loses
    /// no data.
    pub async fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.len_filled < 2 {
            let n = self.r.read(&mut self.len[self.len_filled..]).await?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "UDP session closed"));
            }
            self.len_filled += n;
            if self.len_filled == 2 {
                self.body.resize(u16::from_be_bytes(self.len) as usize, 0);
                self.body_filled = 0;
            }
        }
        while self.body_filled < self.body.len() {
            let n = self.r.read(&mut self.body[self.body_filled..]).await?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "UDP session closed mid-datagram"));
            }
            self.body_filled += n;
        }
        self.metered.received.inc_by(self.body.len() as u64);
        let n = self.body.len().min(buf.len());
        buf[..n].copy_from_slice(&self.body[..n]);
        self.len_filled = 0;
        self.body_filled = 0;
        Ok(n)
    }
}
