//! What an agent is built with besides its config: the parts of the
//! outside world that tests replace.

use std::sync::Arc;

use edgemesh_core::Clock;
use edgemesh_proxy::{OriginalDst, Remote, SocketOriginalDst};

use crate::host::{Host, SystemHost};
use crate::lifecycle::LogControl;

/// The agent's view of its host and of other nodes. [`Deps::system`] is the
/// real machine; in-process tests replace any part.
#[derive(Clone)]
pub struct Deps {
    /// Wall-clock time for the ages the agent reports (cache age, source
    /// outage); timers follow tokio's time.
    pub clock: Clock,
    /// The node name and resolvers for settings left unset.
    pub host: Arc<dyn Host>,
    /// The original destination of intercepted connections
    /// (`SO_ORIGINAL_DST`).
    pub original_dst: Arc<dyn OriginalDst>,
    /// Endpoints on other nodes. `None`: through the libp2p tunnel when
    /// `tunnel.enabled`, else dialled directly. `Some`: through this
    /// instead, and the tunnel is not started.
    pub remote: Option<Arc<dyn Remote>>,
    /// The process' log filter, for `/logging` and `logLevel` reloads.
    /// `None`: the agent changes no filter (in-process tests).
    pub logging: Option<LogControl>,
}

impl Deps {
    /// The machine the agent runs on.
    pub fn system() -> Self {
        Self {
            clock: Clock::system(),
            host: Arc::new(SystemHost::default()),
            original_dst: Arc::new(SocketOriginalDst),
            remote: None,
            logging: None,
        }
    }
}

impl Default for Deps {
    fn default() -> Self {
        Self::system()
    }
}
