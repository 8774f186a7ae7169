//! Loads the programs, attaches them to a cgroup v2 directory, and pins
//! programs, links and maps under a bpffs directory, so they outlive the
//! agent (traffic keeps flowing while it restarts). At start, complete
//! pinned state is adopted instead of loading twice; incomplete state (a
//! crash mid-load) is removed and loaded afresh.
//!
//! Layout under the pin directory: `maps/<map>`, `progs/<program>`,
//! `links/<program>`. A pinned link keeps its program attached until the
//! file is removed and no descriptor is left: [`FastPath::remove`] does
//! that.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aya::maps::{Array, HashMap, Map, MapData};
use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, CgroupSockAddr};

use crate::abi::{BackendKey, BackendValue, Config, RevKey, RevValue, SvcKey, SvcValue};
use crate::writer::MapWriter;
use crate::{Error, OBJECT, netns, support};

/// The programs, by their function names in `bpf/edgemesh.bpf.c`.
pub const PROGRAMS: [&str; 8] = [
    "em_connect4",
    "em_connect6",
    "em_sendmsg4",
    "em_sendmsg6",
    "em_recvmsg4",
    "em_recvmsg6",
    "em_getpeername4",
    "em_getpeername6",
];
pub(crate) const SERVICES: &str = "em_services";
pub(crate) const BACKENDS: &str = "em_backends";
pub(crate) const REVERSE: &str = "em_rev";
pub(crate) const AFFINITY: &str = "em_affinity";
pub(crate) const CONFIG: &str = "em_config";
const MAPS: [&str; 5] = [SERVICES, BACKENDS, REVERSE, AFFINITY, CONFIG];
const BPFFS: &str = "/sys/fs/bpf";

/// Where to attach and where to pin.
#[derive(Clone, Debug)]
pub struct Options {
    /// A cgroup v2 directory; None: the host's cgroup v2 root.
    pub cgroup: Option<PathBuf>,
    /// A directory on the bpffs at /sys/fs/bpf.
    pub pin_dir: PathBuf,
    /// The network namespace whose clients may be sent to host-only
    /// (loopback) backends, as a `/run/netns/<name>` or
    /// `/proc/<pid>/ns/net` path; None: the calling thread's (the agent
    /// runs in the host's).
    pub host_netns: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Options {
        Options { cgroup: None, pin_dir: PathBuf::from(BPFFS).join("edgemesh"), host_netns: None }
    }
}

/// The attached fast path and the writer of its maps.
pub struct FastPath {
    pin_dir: PathBuf,
    cgroup: PathBuf,
    adopted: bool,
    writer: MapWriter,
}

impl FastPath {
    /// Checks support, mounts bpffs if needed, then adopts the pinned
    /// state or loads, attaches and pins.
    pub fn start(options: Options) -> Result<FastPath, Error> {
        support::check()?;
        let cgroup = match options.cgroup {
            Some(c) => c,
            None => support::cgroup2_root()?,
        };
        let host_netns = netns::cookie(options.host_netns.as_deref()).map_err(|error| Error::Netns {
            path: options.host_netns.clone().unwrap_or_else(|| "/proc/thread-self/ns/net".into()),
            error,
        })?;
        ensure_bpffs()?;
        let pin_dir = options.pin_dir;
        let mut adopted = is_complete(&pin_dir);
        let adoption = if adopted {
            tracing::debug!(pins = %pin_dir.display(), "adopting the pinned fast path");
            Some(adopt(&pin_dir, host_netns))
        } else {
            None
        };
        let writer = if let Some(Ok(writer)) = adoption {
            writer
        } else {
            if let Some(Err(e)) = adoption {
                // Pinned by another build (an upgrade): its programs are
                // replaced, with a moment where none is attached.
                tracing::warn!(pins = %pin_dir.display(), error = %e, "pinned fast path not adoptable: loading afresh");
                adopted = false;
            }
            if pin_dir.exists() {
                tracing::warn!(pins = %pin_dir.display(), "incomplete or stale pinned fast path: removing it");
                remove_pins(&pin_dir)?;
            }
            load(&pin_dir, &cgroup, host_netns).inspect_err(|_| {
                let _ = remove_pins(&pin_dir);
            })?
        };
        Ok(FastPath { pin_dir, cgroup, adopted, writer })
    }

    /// Whether the programs were already there (pinned by an earlier run).
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// The cgroup this run attached to (an adopted run: the one asked for;
    /// the pins do not record where the first run attached).
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    pub fn writer(&mut self) -> &mut MapWriter {
        &mut self.writer
    }

    /// Detaches and unpins everything: the links (detaching the programs),
    /// the programs and the maps, and the pin directory.
    pub fn remove(self) -> Result<(), Error> {
        let FastPath { pin_dir, writer, .. } = self;
        drop(writer);
        remove_pins(&pin_dir)
    }
}

fn is_complete(pin_dir: &Path) -> bool {
    PROGRAMS.iter().all(|p| pin_dir.join("links").join(p).exists() && pin_dir.join("progs").join(p).exists())
        && MAPS.iter().all(|m| pin_dir.join("maps").join(m).exists())
}

/// Mounts bpffs at /sys/fs/bpf unless it is there (once per process).
fn ensure_bpffs() -> Result<(), Error> {
    static MOUNTING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = MOUNTING.lock().unwrap_or_else(|e| e.into_inner());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mounted = mountinfo.lines().any(|l| {
        l.split_once(" - ")
            .is_some_and(|(left, right)| right.starts_with("bpf ") && left.split_whitespace().nth(4) == Some(BPFFS))
    });
    if mounted {
        return Ok(());
    }
    tracing::info!("mounting bpffs at {BPFFS}");
    rustix::mount::mount("bpf", BPFFS, "bpf", rustix::mount::MountFlags::empty(), None)
        .map_err(|e| Error::Bpffs { path: BPFFS.into(), error: e.into() })
}

fn load(pin_dir: &Path, cgroup: &Path, host_netns: u64) -> Result<MapWriter, Error> {
    for sub in ["maps", "progs", "links"] {
        let dir = pin_dir.join(sub);
        std::fs::create_dir_all(&dir).map_err(|error| Error::Pins { path: dir, error })?;
    }
    let cgroup_dir = File::open(cgroup).map_err(|error| Error::Cgroup { path: cgroup.into(), error })?;
    let mut ebpf = aya::Ebpf::load(OBJECT)?;
    // The maps are taken and pinned first, and kept open until every
    // program is attached.
    let mut maps = Vec::new();
    for name in MAPS {
        let map = ebpf.take_map(name).ok_or(Error::NotInObject { name })?;
        let path = pin_dir.join("maps").join(name);
        map.pin(&path).map_err(|error| Error::Pin { path, error })?;
        maps.push(map);
    }
    write_config(maps.last_mut().expect("the config map is last"), host_netns)?;
    for name in PROGRAMS {
        let program = ebpf.program_mut(name).ok_or(Error::NotInObject { name })?;
        let program: &mut CgroupSockAddr = program.try_into().map_err(|error| Error::Program { name, error })?;
        program.load().map_err(|error| Error::Program { name, error })?;
        let path = pin_dir.join("progs").join(name);
        program.pin(&path).map_err(|error| Error::Pin { path, error })?;
        // Single: AllowMultiple gives EINVAL on cgroup links; links stack anyway.
        let id =
            program.attach(&cgroup_dir, CgroupAttachMode::Single).map_err(|error| Error::Program { name, error })?;
        let link = program.take_link(id).map_err(|error| Error::Program { name, error })?;
        let link: FdLink = link.try_into().map_err(|error| Error::Link { name, error })?;
        let path = pin_dir.join("links").join(name);
        link.pin(&path).map_err(|error| Error::Pin { path, error })?;
    }
    let mut maps = maps.into_iter();
    let mut next = || maps.next().expect("in MAPS order");
    let (services, backends, reverse) = (next(), next(), next());
    MapWriter::new(hash_map(SERVICES, services)?, hash_map(BACKENDS, backends)?, hash_map(REVERSE, reverse)?, false)
}

/// Opens the pinned maps of programs this build loaded; the host's
/// namespace is written again (the option may name another one than the
/// first run's).
fn adopt(pin_dir: &Path, host_netns: u64) -> Result<MapWriter, Error> {
    let open = |name: &'static str| -> Result<Map, Error> {
        let data = MapData::from_pin(pin_dir.join("maps").join(name)).map_err(|error| Error::Map { name, error })?;
        Map::from_map_data(data).map_err(|error| Error::Map { name, error })
    };
    let mut config = open(CONFIG)?;
    let found = config_array(&mut config)?.get(&0, 0).map_err(|error| Error::Map { name: CONFIG, error })?.object_hash;
    let want = object_hash();
    if found != want {
        return Err(Error::OtherBuild { path: pin_dir.into(), found, want });
    }
    write_config(&mut config, host_netns)?;
    let (services, backends) = (hash_map(SERVICES, open(SERVICES)?)?, hash_map(BACKENDS, open(BACKENDS)?)?);
    MapWriter::new(services, backends, hash_map(REVERSE, open(REVERSE)?)?, true)
}

fn config_array(map: &mut Map) -> Result<Array<&mut MapData, Config>, Error> {
    Array::try_from(map).map_err(|error| Error::Map { name: CONFIG, error })
}

/// Writes the one entry of the config map.
fn write_config(map: &mut Map, host_netns: u64) -> Result<(), Error> {
    let config = Config { host_netns_cookie: host_netns, object_hash: object_hash() };
    config_array(map)?.set(0, config, 0).map_err(|error| Error::Map { name: CONFIG, error })
}

/// FNV-1a of the BPF object: the same for every run of one build.
fn object_hash() -> u64 {
    OBJECT.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

fn hash_map<K: aya::Pod, V: aya::Pod>(name: &'static str, map: Map) -> Result<HashMap<MapData, K, V>, Error> {
    HashMap::try_from(map).map_err(|error| Error::Map { name, error })
}

pub(crate) type ServicesMap = HashMap<MapData, SvcKey, SvcValue>;
pub(crate) type BackendsMap = HashMap<MapData, BackendKey, BackendValue>;
pub(crate) type ReverseMap = HashMap<MapData, RevKey, RevValue>;

/// Removes the links first (which detaches the programs once no
/// descriptor holds them), then the programs and maps, then the
/// directories. Missing files are fine: this also cleans up a half load.
fn remove_pins(pin_dir: &Path) -> Result<(), Error> {
    for sub in ["links", "progs", "maps"] {
        let dir = pin_dir.join(sub);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(Error::Pins { path: dir, error }),
        };
        for entry in entries {
            let path = entry.map_err(|error| Error::Pins { path: dir.clone(), error })?.path();
            std::fs::remove_file(&path).map_err(|error| Error::Pins { path, error })?;
        }
        std::fs::remove_dir(&dir).map_err(|error| Error::Pins { path: dir, error })?;
    }
    match std::fs::remove_dir(pin_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Pins { path: pin_dir.into(), error: e }),
        _ => Ok(()),
    }
}
