//! Joins a container's network namespace to its VM, Kata's tc-filter model (also
//! firecracker-containerd's tc-redirect-tap): in the namespace CNI set up, next to the
//! one interface CNI made, a tap with the same MTU, and two ingress redirects, so every
//! frame that reaches the interface leaves through the tap (to brig-vmm's virtio-net)
//! and every frame from the tap leaves through the interface. The guest NIC takes the
//! interface's MAC and the addresses and routes CNI gave it, so the container sees
//! inside the VM the address containerd reports.
//!
//! Everything is done over rtnetlink (the rtnetlink crate) from a thread that entered
//! the namespace: the shim's own threads never change namespace. The tap is not
//! persistent: it goes away with the last descriptor (the shim's after it hands it to
//! brig-vmm, then brig-vmm's), so a SIGKILLed brig-vmm leaves none. [`leave`] removes
//! what would outlive both: the ingress qdisc (and with it the redirect) on CNI's
//! interface.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use nix::sched::{setns, CloneFlags};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkLayerType, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType};
use rtnetlink::packet_route::tc::{TcAttribute, TcHandle};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

/// The tap brig makes in the container's namespace.
pub const TAP_NAME: &str = "tap0_brig";
/// `ETH_P_ALL`, the redirect filters' protocol (every frame), in the network byte
/// order the kernel reads it in (rtnetlink passes it through as given).
const ETH_P_ALL: u16 = 0x0003_u16.to_be();

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("cannot open the network namespace {path}")]
    Netns { path: PathBuf, source: std::io::Error },
    #[error("cannot enter the network namespace {path}")]
    Setns { path: PathBuf, source: nix::Error },
    #[error(
        "the network namespace {path} has no Ethernet interface for the container: \
         set up its network (CNI) before starting the task, or run it without a network namespace"
    )]
    NoInterface { path: PathBuf },
    #[error(
        "the network namespace {path} has several Ethernet interfaces ({names}); brig joins \
         exactly one to the VM: give the container one network"
    )]
    SeveralInterfaces { path: PathBuf, names: String },
    #[error("interface {name} in {path} has no {what}")]
    Incomplete { path: PathBuf, name: String, what: &'static str },
    #[error("cannot create the tap {TAP_NAME} in {path}: {source} (is /dev/net/tun there, is the shim root?)")]
    Tap { path: PathBuf, source: std::io::Error },
    #[error("the tap {TAP_NAME} in {path} refused {what}: {source}")]
    TapRefused { path: PathBuf, what: String, source: rtnetlink::Error },
    #[error("interface {name} in {path} already has an ingress qdisc (another tool's); brig cannot redirect it")]
    Busy { path: PathBuf, name: String },
    #[error("netlink in {path}: {what}: {source}")]
    Netlink { path: PathBuf, what: &'static str, source: rtnetlink::Error },
    #[error("cannot run netlink in {path}")]
    Runtime { path: PathBuf, source: std::io::Error },
    #[error(
        "interface {name} in {path} has MTU {mtu}; the NIC of a VM created without a network namespace \
         takes at most {max_mtu}: give the task its network namespace before create (as CRI does) for more"
    )]
    MtuAboveBoot { path: PathBuf, name: String, mtu: u32, max_mtu: u32 },
    #[error("cannot make the task's network namespace at {path}")]
    Own { path: PathBuf, source: std::io::Error },
}

/// An IP address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A route through the joined interface (the main table's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// None: the default route.
    pub destination: Option<IpNet>,
    pub gateway: Option<IpAddr>,
}

/// CNI's interface as the guest NIC must look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// Global addresses (link-local IPv6 ones are the guest kernel's own).
    pub addresses: Vec<IpNet>,
    pub routes: Vec<Route>,
}

/// A namespace joined to a VM: the tap's descriptor (for brig-vmm) and what the
/// guest NIC is to be.
#[derive(Debug)]
pub struct Joined {
    pub tap: OwnedFd,
    pub interface: Interface,
}

/// Joins the namespace at `netns` (a `/proc/PID/ns/net` or `/var/run/netns/NAME` path).
/// Nothing is left half-made: on error, the tap and qdiscs it created are removed.
pub fn join(netns: &Path) -> Result<Joined, NetworkError> {
    in_netns(netns, |handle, path| async move {
        let mut made = Made::default();
        let result = join_in(&handle, &path, &mut made).await;
        if result.is_err() {
            made.undo(&handle).await;
        }
        result
    })
}

/// Makes a network namespace bound to `path` (created, so it must not exist): the
/// namespace of a task whose spec names none. It has only loopback until CNI adds an
/// interface to it (`ctr run --cni` does, between create and start, through
/// `/proc/<task pid>/ns/net`: brig-vmm runs in it). [`remove_netns`] undoes it.
pub fn make_netns(path: &Path) -> Result<(), NetworkError> {
    use std::os::unix::fs::OpenOptionsExt;
    let own = |source| NetworkError::Own { path: path.to_path_buf(), source };
    File::options().write(true).create_new(true).mode(0o600).open(path).map_err(own)?;
    let target = path.to_path_buf();
    let made = std::thread::spawn(move || -> Result<(), nix::Error> {
        // Only this thread moves; it ends here, and the bind mount keeps the namespace.
        nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
        let flags = nix::mount::MsFlags::MS_BIND;
        nix::mount::mount(Some("/proc/thread-self/ns/net"), &target, None::<&str>, flags, None::<&str>)
    })
    .join()
    .unwrap_or_else(|_| panic!("the netns thread panicked"));
    made.map_err(|e| {
        let _ = std::fs::remove_file(path);
        own(std::io::Error::from(e))
    })
}

/// Removes a namespace [`make_netns`] bound; it ends once no process is in it
/// (brig-vmm's exit). Already gone is not an error.
pub fn remove_netns(path: &Path) {
    if let Err(e) = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        if path.exists() && e != nix::errno::Errno::EINVAL {
            log::warn!("unmounting the network namespace {}: {e}", path.display());
        }
    }
    let _ = std::fs::remove_file(path);
}

/// Creates the tap in a namespace that has no interface joined yet (one from
/// [`make_netns`]): brig-vmm gets it at boot, [`connect`] redirects it at start.
pub fn make_tap(netns: &Path) -> Result<OwnedFd, NetworkError> {
    in_netns(netns, |handle, path| async move {
        let mut made = Made::default();
        let result = new_tap(&handle, &path, &mut made).await;
        if result.is_err() {
            made.undo(&handle).await;
        }
        result.map(|(tap, _)| tap)
    })
}

/// Redirects CNI's interface, if the namespace has one now, to the tap
/// [`make_tap`] made, and returns what the guest NIC is to be; `None`: the
/// container has only loopback (a plain `ctr run`). An interface whose MTU is above
/// `max_mtu` (the NIC's since boot) is refused before anything is changed.
pub fn connect(netns: &Path, max_mtu: u32) -> Result<Option<Interface>, NetworkError> {
    in_netns(netns, move |handle, path| async move {
        let Some((interface, index)) = find_interface(&handle, &path).await? else { return Ok(None) };
        if interface.mtu > max_mtu {
            let (name, mtu) = (interface.name, interface.mtu);
            return Err(NetworkError::MtuAboveBoot { path, name, mtu, max_mtu });
        }
        let incomplete = || NetworkError::Incomplete { path: path.clone(), name: TAP_NAME.into(), what: "link" };
        let tap_index = tap_index(&handle, &path).await?.ok_or_else(incomplete)?;
        // The tap is not ours to remove here: it is brig-vmm's.
        let mut made = Made::default();
        let result = redirect(&handle, &path, &interface, index, tap_index, &mut made).await;
        if result.is_err() {
            made.undo(&handle).await;
        }
        result.map(|()| Some(interface))
    })
}

/// Removes the tap and interface `name`'s ingress qdisc (brig's, kind `ingress`: a
/// `clsact` another tool attached is left alone) from the namespace at `netns`; what
/// is already gone is not an error.
pub fn leave(netns: &Path, name: &str) -> Result<(), NetworkError> {
    let name = name.to_owned();
    in_netns(netns, |handle, path| async move { leave_in(&handle, &path, &name).await })
}

/// What a task's `network` file records of its join, so that the interface is
/// left also by `shim delete` after the shim was killed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attachment {
    pub netns: PathBuf,
    /// CNI's interface; empty while none is joined.
    pub interface: String,
    /// The namespace is the shim's ([`make_netns`]), removed with the task.
    #[serde(default)]
    pub owned: bool,
}

/// The file in a task's state directory holding its [`Attachment`].
const ATTACHMENT_FILE: &str = "network";
/// The file in a task's state directory its own network namespace is bound to.
pub const OWN_NETNS: &str = "netns";

impl From<NetworkError> for crate::error::ShimError {
    fn from(e: NetworkError) -> Self {
        use crate::error::ShimError;
        let text = crate::error::chain(&e);
        match e {
            NetworkError::NoInterface { .. }
            | NetworkError::SeveralInterfaces { .. }
            | NetworkError::Busy { .. }
            | NetworkError::MtuAboveBoot { .. } => ShimError::FailedPrecondition(text),
            NetworkError::Netns { .. } => ShimError::InvalidArgument(text),
            _ => ShimError::Internal(text),
        }
    }
}

/// Joins `netns` to the VM of the task in `dir` (off the async runtime: netlink runs on
/// a thread of its own) and records it there before anything else can fail.
pub async fn join_task(netns: PathBuf, dir: &Path) -> Result<(Joined, Attachment), crate::error::ShimError> {
    let path = netns.clone();
    let joined = tokio::task::spawn_blocking(move || join(&path))
        .await
        .map_err(|e| crate::error::ShimError::Internal(format!("network join task: {e}")))??;
    let attachment = Attachment { netns, interface: joined.interface.name.clone(), owned: false };
    if let Err(e) = record(&attachment, dir) {
        leave_task(&attachment).await;
        return Err(e);
    }
    Ok((joined, attachment))
}

/// Writes the task's `network` file.
fn record(attachment: &Attachment, dir: &Path) -> Result<(), crate::error::ShimError> {
    let body = serde_json::to_vec(attachment).map_err(|e| crate::error::ShimError::Internal(e.to_string()))?;
    Ok(crate::files::write_private(&dir.join(ATTACHMENT_FILE), body)?)
}

/// Runs blocking network work off the async runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, NetworkError> + Send + 'static,
) -> Result<T, crate::error::ShimError> {
    let done = tokio::task::spawn_blocking(work).await;
    Ok(done.map_err(|e| crate::error::ShimError::Internal(format!("network task: {e}")))??)
}

/// Gives the task in `dir`, whose spec names no namespace, one of its own with a
/// tap in it ([`make_netns`], [`make_tap`]), recorded before the tap is made.
pub async fn own_task(dir: &Path) -> Result<(OwnedFd, Attachment), crate::error::ShimError> {
    let netns = dir.join(OWN_NETNS);
    let attachment = Attachment { netns: netns.clone(), interface: String::new(), owned: true };
    blocking({
        let netns = netns.clone();
        move || make_netns(&netns)
    })
    .await?;
    let tap = match record(&attachment, dir) {
        Ok(()) => blocking(move || make_tap(&netns)).await,
        Err(e) => Err(e),
    };
    match tap {
        Ok(tap) => Ok((tap, attachment)),
        Err(e) => {
            leave_task(&attachment).await;
            Err(e)
        }
    }
}

/// At start, [`connect`]s the task's own namespace, and records CNI's interface.
pub async fn connect_task(
    attachment: &mut Attachment,
    dir: &Path,
    max_mtu: u32,
) -> Result<Option<Interface>, crate::error::ShimError> {
    let netns = attachment.netns.clone();
    let Some(interface) = blocking(move || connect(&netns, max_mtu)).await? else { return Ok(None) };
    attachment.interface = interface.name.clone();
    if let Err(e) = record(attachment, dir) {
        leave_task(attachment).await;
        return Err(e);
    }
    Ok(Some(interface))
}

/// Undoes [`join_task`], [`own_task`] and [`connect_task`]; a failure is logged (the
/// task is going away regardless).
pub async fn leave_task(attachment: &Attachment) {
    let Attachment { netns, interface, owned } = attachment.clone();
    let left = tokio::task::spawn_blocking(move || {
        let left = if netns.exists() { leave(&netns, &interface) } else { Ok(()) };
        if owned {
            remove_netns(&netns);
        }
        left
    })
    .await;
    match left {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::warn!("leaving {}: {}", attachment.netns.display(), crate::error::chain(&e)),
        Err(e) => log::warn!("leaving {}: {e}", attachment.netns.display()),
    }
}

/// [`leave_task`] for what the task in `dir` recorded, if anything (`shim delete`).
pub async fn leave_recorded(dir: &Path) {
    let Ok(body) = std::fs::read(dir.join(ATTACHMENT_FILE)) else { return };
    match serde_json::from_slice::<Attachment>(&body) {
        Ok(attachment) => leave_task(&attachment).await,
        Err(e) => log::warn!("{}/{ATTACHMENT_FILE} is not the shim's: {e}", dir.display()),
    }
}

/// What a `join` has made so far, so that a failed one undoes exactly that.
#[derive(Debug, Default)]
struct Made {
    tap: Option<u32>,
    qdiscs: Vec<u32>,
}

impl Made {
    async fn undo(self, handle: &Handle) {
        for index in self.qdiscs {
            let _ = delete_ingress(handle, index).await;
        }
        if let Some(index) = self.tap {
            let _ = handle.link().del(index).execute().await;
        }
    }
}

async fn delete_ingress(handle: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    let mut del = handle.qdisc().del(i32::try_from(index).unwrap_or(i32::MAX));
    del.message_mut().header.parent = TcHandle::INGRESS;
    del.message_mut().header.handle = TcHandle::from(0xffff_0000);
    del.execute().await
}

/// Runs `work` with an rtnetlink connection inside the namespace at `netns`, on a
/// thread of its own (setns changes only the calling thread's namespace).
fn in_netns<T, F, Fut>(netns: &Path, work: F) -> Result<T, NetworkError>
where
    T: Send + 'static,
    F: FnOnce(Handle, PathBuf) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, NetworkError>>,
{
    let path = netns.to_path_buf();
    let file = File::open(&path).map_err(|source| NetworkError::Netns { path: path.clone(), source })?;
    std::thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| NetworkError::Setns { path: path.clone(), source })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|source| NetworkError::Runtime { path: path.clone(), source })?;
        runtime.block_on(async move {
            let (connection, handle, _) =
                rtnetlink::new_connection().map_err(|source| NetworkError::Runtime { path: path.clone(), source })?;
            tokio::spawn(connection);
            work(handle, path).await
        })
    })
    .join()
    .unwrap_or_else(|_| panic!("the netlink thread panicked"))
}

fn netlink<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(rtnetlink::Error) -> NetworkError + 'a {
    move |source| NetworkError::Netlink { path: path.to_path_buf(), what, source }
}

fn link_name(link: &LinkMessage) -> String {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(name) => Some(name.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// CNI's interface is an Ethernet one (a veth, macvlan, ipvlan …): lo, and the
/// fallback devices tunnel modules put in every namespace (tunl0, sit0, gre0 …), are not.
fn is_candidate(link: &LinkMessage) -> bool {
    !link.header.flags.contains(LinkFlags::Loopback)
        && link.header.link_layer_type == LinkLayerType::Ether
        && link_name(link) != TAP_NAME
}

async fn join_in(handle: &Handle, path: &Path, made: &mut Made) -> Result<Joined, NetworkError> {
    let (interface, index) =
        find_interface(handle, path).await?.ok_or_else(|| NetworkError::NoInterface { path: path.into() })?;
    let (tap, tap_index) = new_tap(handle, path, made).await?;
    redirect(handle, path, &interface, index, tap_index, made).await?;
    Ok(Joined { tap, interface })
}

/// CNI's interface in the namespace and its index, if it has one (several are
/// refused, by name).
async fn find_interface(handle: &Handle, path: &Path) -> Result<Option<(Interface, u32)>, NetworkError> {
    let links: Vec<LinkMessage> = handle.link().get().execute().try_collect().await.map_err(netlink(path, "links"))?;
    let candidates: Vec<&LinkMessage> = links.iter().filter(|l| is_candidate(l)).collect();
    let link = match candidates.as_slice() {
        [] => return Ok(None),
        [one] => *one,
        several => {
            let mut names: Vec<String> = several.iter().map(|l| link_name(l)).collect();
            names.sort();
            let names = names.join(", ");
            return Err(NetworkError::SeveralInterfaces { path: path.into(), names });
        }
    };
    let name = link_name(link);
    let incomplete = |what| NetworkError::Incomplete { path: path.into(), name: name.clone(), what };
    let mac = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => None,
        })
        .ok_or_else(|| incomplete("Ethernet address"))?;
    let mtu = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(mtu) => Some(*mtu),
            _ => None,
        })
        .ok_or_else(|| incomplete("MTU"))?;
    let index = link.header.index;
    let addresses = addresses(handle, path, index).await?;
    let routes = routes(handle, path, index).await?;
    Ok(Some((Interface { name, mac, mtu, addresses, routes }, index)))
}

/// The index of the tap in the namespace, if it has one.
async fn tap_index(handle: &Handle, path: &Path) -> Result<Option<u32>, NetworkError> {
    let links: Vec<LinkMessage> = handle.link().get().execute().try_collect().await.map_err(netlink(path, "links"))?;
    Ok(links.iter().find(|l| link_name(l) == TAP_NAME).map(|l| l.header.index))
}

/// Creates the tap (up, not yet redirected) in the namespace.
async fn new_tap(handle: &Handle, path: &Path, made: &mut Made) -> Result<(OwnedFd, u32), NetworkError> {
    let tap =
        brig_policy::sys::create_tap(TAP_NAME).map_err(|source| NetworkError::Tap { path: path.into(), source })?;
    let tap_index = tap_index(handle, path).await?.ok_or_else(|| NetworkError::Incomplete {
        path: path.into(),
        name: TAP_NAME.into(),
        what: "link after TUNSETIFF",
    })?;
    made.tap = Some(tap_index);
    handle
        .link()
        .set(LinkUnspec::new_with_index(tap_index).up().build())
        .execute()
        .await
        .map_err(|source| NetworkError::TapRefused { path: path.into(), what: "going up".into(), source })?;
    Ok((tap, tap_index))
}

/// Gives the tap the interface's MTU and redirects every frame between the two.
async fn redirect(
    handle: &Handle,
    path: &Path,
    interface: &Interface,
    index: u32,
    tap_index: u32,
    made: &mut Made,
) -> Result<(), NetworkError> {
    let mtu = interface.mtu;
    handle
        .link()
        .set(LinkUnspec::new_with_index(tap_index).mtu(mtu).build())
        .execute()
        .await
        .map_err(|source| NetworkError::TapRefused { path: path.into(), what: format!("MTU {mtu}"), source })?;
    for (from, to) in [(index, tap_index), (tap_index, index)] {
        let from_i32 = i32::try_from(from).unwrap_or(i32::MAX);
        if let Err(e) = handle.qdisc().add(from_i32).ingress().execute().await {
            return Err(match &e {
                rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::EEXIST => {
                    NetworkError::Busy { path: path.into(), name: interface.name.clone() }
                }
                _ => netlink(path, "adding an ingress qdisc")(e),
            });
        }
        made.qdiscs.push(from);
        handle
            .traffic_filter(from_i32)
            .add()
            .parent(0xffff_0000)
            .protocol(ETH_P_ALL)
            .redirect(to)
            .map_err(netlink(path, "building the redirect filter"))?
            .execute()
            .await
            .map_err(netlink(path, "adding the redirect filter"))?;
    }
    Ok(())
}

async fn leave_in(handle: &Handle, path: &Path, name: &str) -> Result<(), NetworkError> {
    let links: Vec<LinkMessage> = handle.link().get().execute().try_collect().await.map_err(netlink(path, "links"))?;
    if let Some(tap) = links.iter().find(|l| link_name(l) == TAP_NAME) {
        // Its qdisc and filter go with it.
        handle.link().del(tap.header.index).execute().await.map_err(netlink(path, "removing the tap"))?;
    }
    let Some(link) = links.iter().find(|l| link_name(l) == name) else { return Ok(()) };
    let index = i32::try_from(link.header.index).unwrap_or(i32::MAX);
    let qdiscs: Vec<_> =
        handle.qdisc().get().index(index).execute().try_collect().await.map_err(netlink(path, "qdiscs"))?;
    let ours = qdiscs
        .iter()
        .any(|q| q.header.parent == TcHandle::INGRESS && q.attributes.contains(&TcAttribute::Kind("ingress".into())));
    if ours {
        delete_ingress(handle, link.header.index).await.map_err(netlink(path, "removing the ingress qdisc"))?;
    }
    Ok(())
}

async fn addresses(handle: &Handle, path: &Path, index: u32) -> Result<Vec<IpNet>, NetworkError> {
    let messages: Vec<_> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(netlink(path, "addresses"))?;
    Ok(messages
        .iter()
        .filter_map(|m| {
            // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on a
            // point-to-point link (and the same address elsewhere).
            let local = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(addr) => Some(*addr),
                _ => None,
            });
            let addr = local.or_else(|| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(addr) => Some(*addr),
                    _ => None,
                })
            })?;
            let link_local = matches!(addr, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
            (!link_local).then_some(IpNet { addr, prefix: m.header.prefix_len })
        })
        .collect())
}

async fn routes(handle: &Handle, path: &Path, index: u32) -> Result<Vec<Route>, NetworkError> {
    let mut routes = Vec::new();
    let requests: [RouteMessage; 2] = [
        RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    ];
    for request in requests {
        let messages: Vec<RouteMessage> =
            handle.route().get(request).execute().try_collect().await.map_err(netlink(path, "routes"))?;
        for m in messages {
            let through = m.attributes.iter().any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index));
            // The guest kernel makes the prefix routes of its addresses itself.
            let kernel_made = m.header.protocol == RouteProtocol::Kernel;
            if !through || kernel_made || m.header.kind != RouteType::Unicast || m.header.table != 254 {
                continue;
            }
            let ip = |a: &RouteAddress| match a {
                RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
                RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
                _ => None,
            };
            let destination = m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(d) => {
                    ip(d).map(|addr| IpNet { addr, prefix: m.header.destination_prefix_length })
                }
                _ => None,
            });
            let gateway = m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(g) => ip(g),
                _ => None,
            });
            // The guest kernel makes the link-local and multicast routes itself.
            let kernel_own = destination.is_some_and(|d| match d.addr {
                IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80 || v6.is_multicast(),
                IpAddr::V4(_) => false,
            });
            if !kernel_own {
                routes.push(Route { destination, gateway });
            }
        }
    }
    Ok(routes)
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::process::Command;

    use super::*;

    /// Runs `ip ARGS`, which must succeed; returns its stdout.
    fn ip(args: &[&str]) -> String {
        let out = Command::new("ip").args(args).output().expect("ip runs");
        assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn tc(args: &[&str]) -> String {
        let out = Command::new("tc").args(args).output().expect("tc runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// What CNI's bridge plugin leaves, without the bridge: an "outer" namespace with
    /// one end of a veth (10.99.0.1/24), and the container's "inner" namespace with the
    /// other end as eth0 (10.99.0.2/24, default route via 10.99.0.1). Removed on drop.
    struct Cni {
        outer: String,
        inner: String,
    }

    impl Cni {
        fn new(tag: &str, with_veth: bool) -> Cni {
            let pid = std::process::id();
            let cni = Cni { outer: format!("brig-o{pid}-{tag}"), inner: format!("brig-i{pid}-{tag}") };
            ip(&["netns", "add", &cni.outer]);
            ip(&["netns", "add", &cni.inner]);
            if with_veth {
                let (o, i) = (cni.outer.as_str(), cni.inner.as_str());
                ip(&["-n", o, "link", "add", "vo", "type", "veth", "peer", "name", "eth0", "netns", i]);
                ip(&["-n", o, "addr", "add", "10.99.0.1/24", "dev", "vo"]);
                ip(&["-n", o, "link", "set", "vo", "up"]);
                ip(&["-n", i, "addr", "add", "10.99.0.2/24", "dev", "eth0"]);
                ip(&["-n", i, "link", "set", "eth0", "up"]);
                ip(&["-n", i, "route", "add", "default", "via", "10.99.0.1"]);
            }
            cni
        }

        fn inner_path(&self) -> PathBuf {
            Path::new("/run/netns").join(&self.inner)
        }

        fn rx_packets(&self) -> u64 {
            let text = ip(&["-n", &self.outer, "-s", "-j", "link", "show", "vo"]);
            let json: serde_json::Value = serde_json::from_str(&text).expect("ip -j");
            json[0]["stats64"]["rx"]["packets"].as_u64().expect("rx packets")
        }
    }

    impl Drop for Cni {
        fn drop(&mut self) {
            for ns in [&self.outer, &self.inner] {
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
    }

    /// Sends a datagram from the outer namespace to the container's address, which
    /// makes the outer side ask for it by ARP.
    fn send_from_outer(cni: &Cni) {
        let outer = File::open(Path::new("/run/netns").join(&cni.outer)).expect("outer");
        std::thread::spawn(move || {
            setns(&outer, CloneFlags::CLONE_NEWNET).expect("enter outer");
            let socket = UdpSocket::bind("10.99.0.1:0").expect("bind");
            let _ = socket.send_to(b"hello", "10.99.0.2:9");
        })
        .join()
        .expect("sender");
    }

    /// The next frame on the tap within 5 s (after its 10-byte virtio header).
    fn read_tap(tap: &OwnedFd) -> Option<Vec<u8>> {
        let mut fds = [nix::poll::PollFd::new(std::os::fd::AsFd::as_fd(tap), nix::poll::PollFlags::POLLIN)];
        if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(5000u16)).ok()? != 1 {
            return None;
        }
        let mut buf = vec![0u8; 65_600];
        let n = nix::unistd::read(tap, &mut buf).ok()?;
        Some(buf[10.min(n)..n].to_vec())
    }

    #[test]
    fn join_takes_the_cni_interface_and_redirects_both_ways() {
        let cni = Cni::new("join", true);
        let joined = join(&cni.inner_path()).expect("join");
        let eth0 = &joined.interface;
        assert_eq!(eth0.name, "eth0");
        assert_eq!(eth0.mtu, 1500);
        assert_eq!(eth0.addresses, [IpNet { addr: "10.99.0.2".parse().expect("ip"), prefix: 24 }]);
        let mac = ip(&["-n", &cni.inner, "-j", "link", "show", "eth0"]);
        let mac: serde_json::Value = serde_json::from_str(&mac).expect("json");
        let want = mac[0]["address"].as_str().expect("address").to_owned();
        let got = eth0.mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        assert_eq!(got, want);
        assert!(
            eth0.routes.contains(&Route { destination: None, gateway: Some("10.99.0.1".parse().expect("ip")) }),
            "{:?}",
            eth0.routes
        );
        assert!(
            !eth0.routes.iter().any(|r| r.destination.is_some_and(|d| d.addr.to_string() == "10.99.0.0")),
            "the address's own prefix route is the guest kernel's to make: {:?}",
            eth0.routes
        );

        let tap = ip(&["-n", &cni.inner, "link", "show", TAP_NAME]);
        assert!(tap.contains("mtu 1500") && tap.contains("UP"), "{tap}");
        for dev in ["eth0", TAP_NAME] {
            let filters = tc(&["-n", &cni.inner, "filter", "show", "dev", dev, "ingress"]);
            assert!(filters.contains("mirred (Egress Redirect to device"), "{dev}: {filters}");
            assert!(filters.contains("protocol all"), "every frame, not one EtherType: {dev}: {filters}");
        }

        // eth0 → tap: the outer side's ARP request for the container's address.
        send_from_outer(&cni);
        let frame = std::iter::from_fn(|| read_tap(&joined.tap))
            .take(20)
            .find(|frame| frame.get(12..14) == Some(&[0x08, 0x06])) // IPv6's own frames come too
            .unwrap_or_else(|| {
                panic!(
                    "no ARP frame from eth0 reached the tap: {}\n{}",
                    tc(&["-s", "-n", &cni.inner, "filter", "show", "dev", "eth0", "ingress"]),
                    ip(&["-s", "-n", &cni.outer, "link", "show", "vo"])
                )
            });
        assert_eq!(&frame[38..42], &[10, 99, 0, 2], "asking for the container's address");

        // tap → eth0: frames the guest sends leave through the veth.
        let before = cni.rx_packets();
        let mut frame = vec![0u8; 10]; // virtio header: no offload
        frame.extend([0xff; 6]);
        frame.extend(eth0.mac);
        frame.extend([0x88, 0xb5]);
        frame.extend([0u8; 50]);
        for _ in 0..5 {
            nix::unistd::write(&joined.tap, &frame).expect("write the tap");
        }
        assert!(cni.rx_packets() >= before + 5, "the guest's frames came out of the veth");
    }

    /// `ip ARGS` inside the namespace bound at `netns`.
    fn ip_in(netns: &Path, args: &[&str]) -> String {
        let net = format!("--net={}", netns.display());
        let out = Command::new("nsenter").arg(&net).arg("ip").args(args).output().expect("nsenter runs");
        assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn an_own_namespace_gets_a_tap_then_cnis_interface_at_connect() {
        let dir = std::env::temp_dir().join(format!("brig-own-netns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let netns = dir.join(OWN_NETNS);
        make_netns(&netns).expect("make");
        let err = make_netns(&netns).expect_err("it exists").to_string();
        assert!(err.contains("cannot make the task's network namespace"), "{err}");
        let mine = std::fs::read_link("/proc/self/ns/net").expect("ns");
        let theirs = std::fs::read_link(format!("/proc/{}/ns/net", std::process::id())).expect("ns");
        assert_eq!(mine, theirs, "the shim's own threads stay where they were");

        let tap = make_tap(&netns).expect("tap");
        assert!(ip_in(&netns, &["link", "show", TAP_NAME]).contains("UP"));
        assert_eq!(connect(&netns, 1500).expect("connect"), None, "only lo and the tap: nothing to join");

        // What CNI's bridge plugin does through /proc/<task pid>/ns/net.
        let cni = Cni::new("own", false);
        ip_in(&netns, &["link", "add", "eth0", "type", "veth", "peer", "name", "vo"]);
        ip_in(&netns, &["link", "set", "vo", "netns", &format!("/run/netns/{}", cni.outer)]);
        ip_in(&netns, &["addr", "add", "10.99.0.2/24", "dev", "eth0"]);
        ip_in(&netns, &["link", "set", "eth0", "mtu", "1400", "up"]);
        let err = connect(&netns, 1300).expect_err("above the boot MTU").to_string();
        assert!(
            err.contains("interface eth0 in") && err.contains("has MTU 1400") && err.contains("at most 1300"),
            "{err}"
        );
        let net = format!("--net={}", netns.display());
        let tc_in = |args: &[&str]| {
            let out = Command::new("nsenter").arg(&net).arg("tc").args(args).output().expect("nsenter runs");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let qdiscs = tc_in(&["qdisc", "show", "dev", "eth0"]);
        assert!(!qdiscs.contains("ingress"), "refused before anything changed: {qdiscs}");

        let eth0 = connect(&netns, 1500).expect("connect").expect("CNI's interface");
        assert_eq!((eth0.name.as_str(), eth0.mtu), ("eth0", 1400));
        assert_eq!(eth0.addresses, [IpNet { addr: "10.99.0.2".parse().expect("ip"), prefix: 24 }]);
        assert!(ip_in(&netns, &["link", "show", TAP_NAME]).contains("mtu 1400"), "the tap takes eth0's MTU");
        for dev in ["eth0", TAP_NAME] {
            let filters = tc_in(&["filter", "show", "dev", dev, "ingress"]);
            assert!(filters.contains("mirred (Egress Redirect to device"), "{dev}: {filters}");
        }

        drop(tap);
        remove_netns(&netns);
        assert!(!netns.exists());
        let mounts = std::fs::read_to_string("/proc/mounts").expect("mounts");
        assert!(!mounts.contains(&*netns.to_string_lossy()), "{mounts}");
        remove_netns(&netns);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn leave_removes_the_tap_and_the_qdiscs_and_may_run_twice() {
        let cni = Cni::new("leave", true);
        let joined = join(&cni.inner_path()).expect("join");
        leave(&cni.inner_path(), &joined.interface.name).expect("leave");
        drop(joined);
        let links = ip(&["-n", &cni.inner, "link", "show"]);
        assert!(!links.contains(TAP_NAME), "{links}");
        let qdiscs = tc(&["-n", &cni.inner, "qdisc", "show", "dev", "eth0"]);
        assert!(!qdiscs.contains("ingress"), "{qdiscs}");
        leave(&cni.inner_path(), "eth0").expect("nothing left to remove is fine");
    }

    #[test]
    fn an_interface_with_another_tools_ingress_qdisc_is_refused_and_left_alone() {
        let cni = Cni::new("busy", true);
        let out = Command::new("tc").args(["-n", &cni.inner, "qdisc", "add", "dev", "eth0", "clsact"]).output();
        assert!(out.expect("tc runs").status.success(), "clsact on eth0");
        let err = join(&cni.inner_path()).expect_err("busy").to_string();
        assert!(err.contains("interface eth0 in") && err.contains("already has an ingress qdisc"), "{err}");
        let links = ip(&["-n", &cni.inner, "link", "show"]);
        assert!(!links.contains(TAP_NAME), "the failed join removed its tap: {links}");
        leave(&cni.inner_path(), "eth0").expect("leave");
        let qdiscs = tc(&["-n", &cni.inner, "qdisc", "show", "dev", "eth0"]);
        assert!(qdiscs.contains("clsact"), "another tool's qdisc stays: {qdiscs}");
    }

    #[test]
    fn no_interface_or_several_are_refused_by_name_and_leave_nothing() {
        let cni = Cni::new("bad", false);
        let err = join(&cni.inner_path()).expect_err("only lo").to_string();
        assert!(err.contains("has no Ethernet interface"), "{err}");

        ip(&["-n", &cni.inner, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"]);
        let err = join(&cni.inner_path()).expect_err("two").to_string();
        assert!(err.contains("has several Ethernet interfaces (eth0, eth1)"), "{err}");
        let links = ip(&["-n", &cni.inner, "link", "show"]);
        assert!(!links.contains(TAP_NAME), "{links}");

        let err = join(Path::new("/run/netns/brig-does-not-exist")).expect_err("missing").to_string();
        assert!(err.contains("cannot open the network namespace /run/netns/brig-does-not-exist"), "{err}");
    }
}
