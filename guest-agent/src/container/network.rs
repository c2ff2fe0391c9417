//! A container's network namespace in the guest: loopback up (runc brings it up in
//! every namespace it creates), and, when the shim joined a host namespace to the VM,
//! the VM's one NIC moved into it and configured as CNI configured the host interface:
//! its MAC, MTU, addresses and routes. The host end (tap, tc redirects) is the shim's
//! `network` module; frames reach the NIC whatever its address, so the guest's is set
//! to CNI's only so that neighbours see the address CNI reported.
//!
//! Done over rtnetlink from a thread that entered the container's namespace (setns
//! changes only the calling thread's), with a runtime of its own for that thread.

use std::fs::File;
use std::net::IpAddr;

use brig_protocol::agent as api;
use futures_util::TryStreamExt;
use nix::sched::{setns, CloneFlags};
use rtnetlink::packet_route::link::{LinkFlags, LinkLayerType, LinkMessage};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use super::ContainerError;

/// Most addresses, and most routes, one interface takes.
const MAX_ENTRIES: usize = 32;
/// The MTUs brig-vmm's virtio-net offers (brig_vmm_api::config::{MIN_MTU, MAX_MTU}).
const MTUS: std::ops::RangeInclusive<u32> = 68..=9000;

/// An IP address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

/// A route through the interface; no destination is the default route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub destination: Option<IpNet>,
    pub gateway: Option<IpAddr>,
}

/// The NIC as the container is to see it, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub mac: [u8; 6],
    pub mtu: u32,
    pub addresses: Vec<IpNet>,
    pub routes: Vec<Route>,
}

fn invalid(what: String) -> ContainerError {
    ContainerError::Invalid(format!("interface: {what}"))
}

fn ip_net(net: &api::IpNet) -> Result<IpNet, ContainerError> {
    let addr: IpAddr = net.address.parse().map_err(|_| invalid(format!("{:?} is not an IP address", net.address)))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    match u8::try_from(net.prefix) {
        Ok(prefix) if prefix <= max => Ok(IpNet { addr, prefix }),
        _ => Err(invalid(format!("prefix /{} for {addr} (at most /{max})", net.prefix))),
    }
}

impl Interface {
    /// Checks the shim's request: a unicast MAC, an MTU the NIC takes, parseable
    /// addresses and routes, at most [`MAX_ENTRIES`] of each.
    pub fn from_request(req: &api::Interface) -> Result<Interface, ContainerError> {
        let mac = <[u8; 6]>::try_from(req.mac.as_slice())
            .map_err(|_| invalid(format!("a MAC is 6 bytes, not {}", req.mac.len())))?;
        if mac[0] & 1 != 0 || mac == [0; 6] {
            return Err(invalid(format!("{} is not a unicast MAC", format_mac(&mac))));
        }
        if !MTUS.contains(&req.mtu) {
            return Err(invalid(format!("MTU {} (the NIC takes {}-{})", req.mtu, MTUS.start(), MTUS.end())));
        }
        if req.addresses.len() > MAX_ENTRIES || req.routes.len() > MAX_ENTRIES {
            return Err(invalid(format!("more than {MAX_ENTRIES} addresses or routes")));
        }
        let addresses = req.addresses.iter().map(ip_net).collect::<Result<Vec<_>, _>>()?;
        let mut routes = Vec::with_capacity(req.routes.len());
        for route in &req.routes {
            let destination = route.destination.as_ref().map(ip_net).transpose()?;
            let gateway: Option<IpAddr> = match route.gateway.as_str() {
                "" => None,
                text => Some(text.parse().map_err(|_| invalid(format!("gateway {text:?} is not an IP address")))?),
            };
            if destination.is_none() && gateway.is_none() {
                return Err(invalid("a default route needs a gateway".into()));
            }
            if let (Some(d), Some(g)) = (destination, gateway) {
                if d.addr.is_ipv4() != g.is_ipv4() {
                    return Err(invalid(format!("route to {}/{} via {g}: two address families", d.addr, d.prefix)));
                }
            }
            routes.push(Route { destination, gateway });
        }
        Ok(Interface { mac, mtu: req.mtu, addresses, routes })
    }
}

fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn netlink(what: &'static str) -> impl FnOnce(rtnetlink::Error) -> ContainerError {
    move |e| ContainerError::FailedPrecondition(format!("netlink: {what}: {e}"))
}

/// Runs `work` on a thread in the network namespace of `pid` (`None`: the agent's own),
/// with an rtnetlink connection there.
fn in_netns<T, F, Fut>(pid: Option<u32>, work: F) -> Result<T, ContainerError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, ContainerError>>,
{
    let ns = match pid {
        Some(pid) => {
            let path = format!("/proc/{pid}/ns/net");
            Some(File::open(&path).map_err(|source| ContainerError::Io { what: format!("opening {path}"), source })?)
        }
        None => None,
    };
    std::thread::spawn(move || {
        if let Some(ns) = &ns {
            setns(ns, CloneFlags::CLONE_NEWNET)
                .map_err(|e| ContainerError::FailedPrecondition(format!("entering the container's netns: {e}")))?;
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|source| ContainerError::Io { what: "a netlink runtime".into(), source })?;
        runtime.block_on(async move {
            let (connection, handle, _) = rtnetlink::new_connection()
                .map_err(|source| ContainerError::Io { what: "a netlink socket".into(), source })?;
            tokio::spawn(connection);
            work(handle).await
        })
    })
    .join()
    .unwrap_or_else(|_| Err(ContainerError::FailedPrecondition("the netlink thread panicked".into())))
}

/// An Ethernet interface: not loopback, nor a tunnel module's fallback device (sit0 …),
/// which every namespace has.
fn is_nic(link: &LinkMessage) -> bool {
    !link.header.flags.contains(LinkFlags::Loopback) && link.header.link_layer_type == LinkLayerType::Ether
}

async fn links(handle: &Handle) -> Result<Vec<LinkMessage>, ContainerError> {
    handle.link().get().execute().try_collect().await.map_err(netlink("listing links"))
}

/// Sets up the network namespace of the container whose init is `pid`: loopback up
/// and, with `interface`, the VM's NIC moved in and configured.
pub fn configure(pid: u32, interface: Option<Interface>) -> Result<(), ContainerError> {
    if interface.is_some() {
        in_netns(None, move |handle| async move {
            let links = links(&handle).await?;
            let nics: Vec<&LinkMessage> = links.iter().filter(|l| is_nic(l)).collect();
            let [nic] = nics.as_slice() else {
                return Err(ContainerError::FailedPrecondition(format!(
                    "the VM has {} network interfaces outside containers; one was expected (brig-vmm's virtio-net)",
                    nics.len()
                )));
            };
            let move_in = LinkUnspec::new_with_index(nic.header.index).down().setns_by_pid(pid).build();
            handle.link().set(move_in).execute().await.map_err(netlink("moving the NIC into the container"))
        })?;
    }
    in_netns(Some(pid), move |handle| async move {
        let links = links(&handle).await?;
        for link in &links {
            let up = LinkUnspec::new_with_index(link.header.index);
            let message = match &interface {
                _ if link.header.flags.contains(LinkFlags::Loopback) => up.up().build(),
                Some(i) if is_nic(link) => up.address(i.mac.to_vec()).mtu(i.mtu).up().build(),
                _ => continue,
            };
            handle.link().set(message).execute().await.map_err(netlink("configuring a link"))?;
        }
        let Some(interface) = interface else { return Ok(()) };
        let index = links
            .iter()
            .find(|l| is_nic(l))
            .map(|l| l.header.index)
            .ok_or_else(|| ContainerError::FailedPrecondition("the NIC did not arrive in the container".into()))?;
        for net in &interface.addresses {
            handle.address().add(index, net.addr, net.prefix).execute().await.map_err(netlink("adding an address"))?;
        }
        for route in &interface.routes {
            let mut builder = RouteMessageBuilder::<IpAddr>::new().output_interface(index);
            if let Some(d) = route.destination {
                builder = builder
                    .destination_prefix(d.addr, d.prefix)
                    .map_err(|e| invalid(format!("route {route:?}: {e}")))?;
            }
            if let Some(g) = route.gateway {
                builder = builder.gateway(g).map_err(|e| invalid(format!("route {route:?}: {e}")))?;
            }
            handle.route().add(builder.build()).execute().await.map_err(netlink("adding a route"))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(mac: &[u8], mtu: u32) -> api::Interface {
        api::Interface { mac: mac.to_vec(), mtu, ..Default::default() }
    }

    fn net(address: &str, prefix: u32) -> api::IpNet {
        api::IpNet { address: address.into(), prefix, ..Default::default() }
    }

    #[test]
    fn an_interface_request_is_checked_field_by_field() {
        let mac = [0x02, 0x42, 0x0a, 0x58, 0x07, 0x02];
        let mut req = request(&mac, 1500);
        req.addresses = vec![net("10.88.7.2", 24), net("fd00::2", 64)];
        req.routes = vec![api::Route { gateway: "10.88.7.1".into(), ..Default::default() }];
        let ok = Interface::from_request(&req).expect("valid");
        assert_eq!(ok.addresses[1], IpNet { addr: "fd00::2".parse().expect("ip"), prefix: 64 });
        assert_eq!(ok.routes, vec![Route { destination: None, gateway: Some("10.88.7.1".parse().expect("ip")) }]);

        let err = |req: &api::Interface| Interface::from_request(req).expect_err("refused").to_string();
        assert!(err(&request(&mac[..5], 1500)).contains("6 bytes"));
        assert!(err(&request(&[1, 0, 0, 0, 0, 1], 1500)).contains("not a unicast MAC"));
        assert!(err(&request(&mac, 9001)).contains("MTU 9001"));
        let mut bad = request(&mac, 1500);
        bad.addresses = vec![net("10.0.0.1", 33)];
        assert!(err(&bad).contains("prefix /33"));
        bad.addresses = vec![net("not-an-ip", 24)];
        assert!(err(&bad).contains("not an IP address"));
        bad.addresses = vec![net("10.0.0.1", 8); MAX_ENTRIES + 1];
        assert!(err(&bad).contains("more than"));
        let mut no_gateway = request(&mac, 1500);
        no_gateway.routes = vec![api::Route::default()];
        assert!(err(&no_gateway).contains("needs a gateway"));
        let mut mixed = request(&mac, 1500);
        mixed.routes = vec![api::Route {
            destination: Some(net("10.1.0.0", 16)).into(),
            gateway: "fd00::1".into(),
            ..Default::default()
        }];
        assert!(err(&mixed).contains("two address families"));
    }
}
