//! The VIP device (`edge0` by default): the addresses this node must
//! receive service traffic on that no other device holds.
//!
//! It holds exactly: the node-local DNS address (`169.254.96.16` by
//! default, where the DNS server listens in node mode, unless another
//! device has it already) and the VIPs of the services, each as a `/32` or
//! `/128`. With interception a service has a VIP only where its cluster IPs
//! do not serve (a family without a cluster IP, or the target UDP to a
//! cluster IP is DNATed to; see `edgemesh-core`'s registry), so these are
//! few. [`crate::Interceptor`] adds and removes them one by one as services
//! come and go, following the snapshot changelog. An address inside the
//! loopback range is local already and never added.
//!
//! The device is a `dummy` link where the kernel has the type, otherwise an
//! empty bridge (a bridge without ports forwards nothing and holds local
//! addresses just as well). It is driven over rtnetlink: no `ip` binary is
//! needed, and errors carry the kernel's own reason. IPv6 addresses are
//! added without duplicate address detection (there is no link to detect
//! on), so they are usable at once.
//!
//! Ownership: the agent owns the device of its name and nothing else. At
//! start, a device of that name that is a dummy or a bridge without ports
//! is one left by an earlier run (crash) and is replaced; any other device
//! of that name (a veth, a bridge with ports, a physical link) is someone
//! else's: the agent refuses to start rather than touch it. On clean stop
//! the device goes, and its addresses with it.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use edgemesh_core::ServiceEntry;
use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::{AddressMessageBuilder, Handle, LinkBridge, LinkDummy, LinkUnspec};
use tokio::task::JoinHandle;

/// Why the device could not be set up, changed or removed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("cannot open a netlink socket to manage the VIP device: {source}")]
    Socket { source: io::Error },

    #[error(
        "cannot {action} the VIP device {name}: permission denied; this needs root or the CAP_NET_ADMIN \
         capability (run the agent as root, or e.g. `setcap cap_net_admin+ep` on it)"
    )]
    Permission { name: String, action: String },

    #[error(
        "a device named {name} exists and is not one the agent made ({what}); it is left alone: \
         choose another name with --vip-device, or remove it"
    )]
    Foreign { name: String, what: String },

    #[error("cannot {action} the VIP device {name}: {detail}")]
    Failed { name: String, action: String, detail: String },
}

/// errno values the device code tells apart.
const EPERM: i32 = 1;
const ENODEV: i32 = 19;
const EACCES: i32 = 13;
const EEXIST: i32 = 17;
const EOPNOTSUPP: i32 = 95;
const EADDRNOTAVAIL: i32 = 99;

/// The errno of a netlink error answer, if it is one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

/// An operator-facing error for `action` on device `name`.
fn failure(name: &str, action: &str, e: &rtnetlink::Error) -> DeviceError {
    let (name, action) = (name.to_owned(), action.to_owned());
    match (errno(e), e) {
        (Some(EPERM | EACCES), _) => DeviceError::Permission { name, action },
        (Some(_), rtnetlink::Error::NetlinkError(m)) => {
            DeviceError::Failed { name, action, detail: m.to_io().to_string() }
        }
        _ => DeviceError::Failed { name, action, detail: e.to_string() },
    }
}

/// The agent's VIP device, up; see the module docs.
#[derive(Debug)]
pub struct VipDevice {
    name: String,
    index: u32,
    kind: &'static str,
    /// IPv6 works on the device (not disabled on this node).
    ipv6: bool,
    handle: Handle,
    /// The netlink connection's task; ends with the device handle.
    connection: JoinHandle<()>,
}

impl Drop for VipDevice {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl VipDevice {
    /// Creates device `name`, up and without addresses, replacing one left
    /// by an earlier run; refuses a device of that name that is not ours.
    pub async fn create(name: &str) -> Result<Self, DeviceError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(|source| DeviceError::Socket { source })?;
        let connection = tokio::spawn(connection);
        let mut device = VipDevice { name: name.to_owned(), index: 0, kind: "", ipv6: false, handle, connection };
        if let Some(link) = device.link_by_name().await? {
            match device.owner(&link).await? {
                Owner::Agent(kind) => {
                    tracing::info!(device = name, kind, "replacing the VIP device left by an earlier run");
                    device
                        .handle
                        .link()
                        .del(link.header.index)
                        .execute()
                        .await
                        .map_err(|e| failure(name, "delete", &e))?;
                }
                Owner::Other(what) => return Err(DeviceError::Foreign { name: name.to_owned(), what }),
            }
        }
        device.kind = match device.handle.link().add(LinkDummy::new(name).up().build()).execute().await {
            Ok(()) => "dummy",
            Err(e) if errno(&e) == Some(EOPNOTSUPP) => {
                tracing::debug!(device = name, "no dummy link type in this kernel; using an empty bridge");
                let bridge = LinkBridge::new(name).build();
                device.handle.link().add(bridge).execute().await.map_err(|e| failure(name, "create", &e))?;
                "bridge"
            }
            Err(e) => return Err(failure(name, "create", &e)),
        };
        match device.link_by_name().await {
            Ok(Some(link)) => device.index = link.header.index,
            // Made but gone at once (or unreadable): leave nothing half made.
            other => {
                let _ = device.handle.link().del_with_message(LinkUnspec::new_with_name(name).build()).execute().await;
                return Err(other.err().unwrap_or_else(|| DeviceError::Failed {
                    name: name.to_owned(),
                    action: "find".into(),
                    detail: "it vanished right after it was made".into(),
                }));
            }
        }
        // Adding an IPv6 address where IPv6 is disabled fails (EACCES): such
        // a node gets no IPv6 addresses rather than failed updates.
        let sysctl = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
        device.ipv6 = std::fs::read_to_string(&sysctl).is_ok_and(|v| v.trim() == "0");
        if !device.ipv6 {
            tracing::info!(device = name, "IPv6 is disabled on this node: IPv6 VIPs are not put on the device");
        }
        tracing::info!(device = name, kind = device.kind, index = device.index, "VIP device in place");
        Ok(device)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `dummy` or `bridge`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Whether the device can hold `ip` (IPv6 may be disabled).
    pub fn can_hold(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() || self.ipv6
    }

    /// Adds `ip` as a host address (`/32`, `/128`); already there is fine.
    pub async fn add(&self, ip: IpAddr) -> Result<(), DeviceError> {
        let mut request = self.handle.address().add(self.index, ip, host_prefix(ip));
        if ip.is_ipv6() {
            request.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match request.execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
            Err(e) => Err(failure(&self.name, &format!("add address {ip} to"), &e)),
        }
    }

    /// Deletes host address `ip`; already gone is fine.
    pub async fn delete(&self, ip: IpAddr) -> Result<(), DeviceError> {
        match self.handle.address().del(host_address(self.index, ip)).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(EADDRNOTAVAIL | ENODEV)) => Ok(()),
            Err(e) => Err(failure(&self.name, &format!("delete address {ip} from"), &e)),
        }
    }

    /// The addresses on the device (the kernel's own IPv6 link-local
    /// address left out).
    pub async fn addresses(&self) -> Result<Vec<IpAddr>, DeviceError> {
        Ok(self
            .dump_addresses()
            .await?
            .into_iter()
            .filter(|(index, ip)| *index == self.index && !is_link_local(*ip))
            .map(|(_, ip)| ip)
            .collect())
    }

    /// Whether another device of this node already holds `ip` (then the
    /// device need not).
    pub async fn held_elsewhere(&self, ip: IpAddr) -> Result<bool, DeviceError> {
        Ok(self.dump_addresses().await?.into_iter().any(|(index, a)| a == ip && index != self.index))
    }

    /// Every address of the node, with the index of its device.
    async fn dump_addresses(&self) -> Result<Vec<(u32, IpAddr)>, DeviceError> {
        let messages: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| failure(&self.name, "list the addresses of", &e))?;
        Ok(messages.iter().filter_map(|m| local_address(m).map(|ip| (m.header.index, ip))).collect())
    }

    /// Whether the device is still there, as made (someone may have deleted
    /// it, or put another in its place).
    pub async fn is_present(&self) -> Result<bool, DeviceError> {
        Ok(self.link_by_name().await?.is_some_and(|l| l.header.index == self.index))
    }

    /// Deletes the device and its addresses (clean stop).
    pub async fn remove(self) -> Result<(), DeviceError> {
        match self.handle.link().del(self.index).execute().await {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(ENODEV) => {}
            Err(e) => return Err(failure(&self.name, "delete", &e)),
        }
        tracing::info!(device = %self.name, "VIP device removed");
        Ok(())
    }

    /// The link named like the device, if there is one.
    async fn link_by_name(&self) -> Result<Option<LinkMessage>, DeviceError> {
        let mut links = self.handle.link().get().match_name(self.name.clone()).execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(failure(&self.name, "look up", &e)),
        }
    }

    /// Who owns `link` (a device with the agent's device name).
    async fn owner(&self, link: &LinkMessage) -> Result<Owner, DeviceError> {
        let kind = link_kind(link);
        if kind != Some(&InfoKind::Bridge) {
            return Ok(classify(kind, 0));
        }
        let links: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| failure(&self.name, "list the ports of", &e))?;
        let index = link.header.index;
        let ports = links.iter().filter(|l| l.attributes.contains(&LinkAttribute::Controller(index))).count();
        Ok(classify(kind, ports))
    }
}

/// Who owns an existing device of the agent's device name.
#[derive(Debug, PartialEq, Eq)]
enum Owner {
    /// A dummy, or a bridge without ports: what the agent makes.
    Agent(&'static str),
    /// Anything else: someone else's, described.
    Other(String),
}

/// Whose a device of this kind with this many ports is.
fn classify(kind: Option<&InfoKind>, ports: usize) -> Owner {
    match kind {
        Some(InfoKind::Dummy) => Owner::Agent("dummy"),
        Some(InfoKind::Bridge) if ports == 0 => Owner::Agent("bridge"),
        Some(InfoKind::Bridge) => Owner::Other(format!("a bridge with {ports} port(s)")),
        Some(other) => Owner::Other(format!("a {} device", other.to_string().to_lowercase())),
        None => Owner::Other("a device of no special kind (physical?)".into()),
    }
}

fn link_kind(link: &LinkMessage) -> Option<&InfoKind> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(kind) => Some(kind),
            _ => None,
        }),
        _ => None,
    })
}

/// The node's own address in an address message (`IFA_LOCAL` for IPv4,
/// `IFA_ADDRESS` for IPv6, which has no local attribute).
fn local_address(m: &AddressMessage) -> Option<IpAddr> {
    let find = |want_local: bool| {
        m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) if want_local => Some(*ip),
            AddressAttribute::Address(ip) if !want_local => Some(*ip),
            _ => None,
        })
    };
    find(true).or_else(|| find(false))
}

fn host_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

/// The address message naming host address `ip` on device `index`.
fn host_address(index: u32, ip: IpAddr) -> AddressMessage {
    match ip {
        IpAddr::V4(v4) => AddressMessageBuilder::<Ipv4Addr>::new().index(index).address(v4, 32).build(),
        IpAddr::V6(v6) => AddressMessageBuilder::<Ipv6Addr>::new().index(index).address(v6, 128).build(),
    }
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(_) => false,
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    }
}

/// The addresses a service needs on the device: its VIPs (IPv4 and IPv6),
/// except those in the loopback range.
pub fn service_addresses(entry: &ServiceEntry) -> Vec<IpAddr> {
    entry.vips().filter(|ip| !needs_no_device(*ip)).collect()
}

/// Whether `ip` is local without any device of ours (loopback range) or
/// means no address at all (unspecified).
pub fn needs_no_device(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whose_device_it_is() {
        assert_eq!(classify(Some(&InfoKind::Dummy), 0), Owner::Agent("dummy"));
        assert_eq!(classify(Some(&InfoKind::Bridge), 0), Owner::Agent("bridge"));
        assert!(matches!(classify(Some(&InfoKind::Bridge), 2), Owner::Other(w) if w.contains("2 port")));
        assert!(matches!(classify(Some(&InfoKind::Veth), 0), Owner::Other(w) if w.contains("veth")));
        assert!(matches!(classify(None, 0), Owner::Other(w) if w.contains("physical")));
    }

    #[test]
    fn addresses_that_need_no_device() {
        for ip in ["127.251.0.7", "::1", "0.0.0.0", "::"] {
            assert!(needs_no_device(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["169.254.96.16", "9.251.0.7", "fd00:9:251::7"] {
            assert!(!needs_no_device(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn permission_errors_name_the_capability() {
        let mut m = rtnetlink::packet_core::ErrorMessage::default();
        m.code = std::num::NonZeroI32::new(-EPERM);
        let err = failure("edge0", "create", &rtnetlink::Error::NetlinkError(m));
        assert!(err.to_string().contains("CAP_NET_ADMIN") && err.to_string().contains("edge0"), "{err}");
    }
}
