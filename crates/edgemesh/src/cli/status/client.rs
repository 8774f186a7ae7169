//! HTTP/1 GETs to the agent's admin endpoint, one connection each.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::StatusError;

/// How long one request may take, connect included.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The admin endpoint of a running agent at `addr` (`host:port`).
pub struct AdminClient {
    pub addr: String,
}

impl AdminClient {
    /// GET `path`: the status and body.
    pub async fn get(&self, path: &str) -> Result<(StatusCode, String), StatusError> {
        match tokio::time::timeout(TIMEOUT, self.try_get(path)).await {
            Ok(result) => result,
            Err(_) => Err(StatusError::Timeout { addr: self.addr.clone(), path: path.to_owned() }),
        }
    }

    /// GET `path`, which must answer 200: its body.
    pub async fn get_ok(&self, path: &str) -> Result<String, StatusError> {
        match self.get(path).await? {
            (StatusCode::OK, body) => Ok(body),
            (status, body) => Err(StatusError::Http { path: path.to_owned(), status, body: body.trim().to_owned() }),
        }
    }

    /// GET `path` as JSON of type `T`.
    pub async fn json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, StatusError> {
        let body = self.get_ok(path).await?;
        serde_json::from_str(&body).map_err(|e| StatusError::Decode { path: path.to_owned(), reason: e.to_string() })
    }

    async fn try_get(&self, path: &str) -> Result<(StatusCode, String), StatusError> {
        let unreachable = |source| StatusError::Unreachable { addr: self.addr.clone(), source };
        let stream = TcpStream::connect(&self.addr).await.map_err(unreachable)?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| self.broken(path, e))?;
        let conn = tokio::spawn(conn);
        let req = Request::get(path)
            .header(hyper::header::HOST, &self.addr)
            .body(Empty::<Bytes>::new())
            .map_err(|e| StatusError::Decode { path: path.to_owned(), reason: e.to_string() })?;
        let resp = sender.send_request(req).await.map_err(|e| self.broken(path, e))?;
        let status = resp.status();
        let body = resp.into_body().collect().await.map_err(|e| self.broken(path, e))?.to_bytes();
        conn.abort();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    fn broken(&self, path: &str, e: hyper::Error) -> StatusError {
        StatusError::Broken { addr: self.addr.clone(), path: path.to_owned(), reason: e.to_string() }
    }
}
