//! virtio-net devices, each on a tap descriptor the caller opened.
//!
//! brig-vmm never creates, names or configures an interface: the shim creates the
//! tap in the container's network namespace and passes the open descriptor, which
//! brig-vmm inherits (through brig-jailer's `keep_fds`). brig-vmm checks that it is
//! a tap with `IFF_NO_PI | IFF_VNET_HDR` when it builds the device.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ConfigError;

/// The smallest MTU an IPv4 interface may have (RFC 791).
pub const MIN_MTU: u16 = 68;
/// The largest MTU brig-vmm offers: jumbo frames. Beyond it Linux guests post
/// 64 KiB receive buffers, a ring of which would take a small guest's memory.
pub const MAX_MTU: u16 = 9000;
/// Ethernet's MTU, when the configuration names none.
pub const DEFAULT_MTU: u16 = 1500;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// An open tap descriptor brig-vmm inherits (3 or above).
    pub tap_fd: i32,
    /// The guest NIC's address (the one CNI gave the container's interface).
    pub mac: MacAddr,
    /// The guest NIC's MTU (the container interface's).
    #[serde(default = "default_mtu")]
    pub mtu: u16,
}

fn default_mtu() -> u16 {
    DEFAULT_MTU
}

impl NetConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.tap_fd <= 2 {
            return Err(ConfigError::TapFd(self.tap_fd));
        }
        if !(MIN_MTU..=MAX_MTU).contains(&self.mtu) {
            return Err(ConfigError::Mtu { got: self.mtu, min: MIN_MTU, max: MAX_MTU });
        }
        self.mac.validate()
    }
}

/// An Ethernet address, written `02:42:ac:11:00:02`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A NIC's own address must be unicast and not all zeros.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.0[0] & 1 == 1 || self.0 == [0; 6] {
            return Err(ConfigError::Mac(format!("{self} is not a unicast address")));
        }
        Ok(())
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<MacAddr, ConfigError> {
        let bad = || ConfigError::Mac(format!("`{text}` is not a MAC address (six hex bytes: 02:42:ac:11:00:02)"));
        let mut bytes = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut bytes {
            let part =
                parts.next().filter(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit())).ok_or_else(bad)?;
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(bytes))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<MacAddr, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_addresses_parse_print_and_must_be_unicast() {
        let mac: MacAddr = "02:42:AC:11:00:02".parse().expect("mac");
        assert_eq!(mac.0, [0x02, 0x42, 0xac, 0x11, 0x00, 0x02]);
        assert_eq!(mac.to_string(), "02:42:ac:11:00:02");
        mac.validate().expect("unicast");
        for bad in
            ["02:42:ac:11:00", "02:42:ac:11:00:02:03", "02:42:ac:11:0:02", "zz:42:ac:11:00:02", "02:+2:ac:11:00:02", ""]
        {
            let err = bad.parse::<MacAddr>().expect_err(bad).to_string();
            assert!(err.contains("is not a MAC address"), "{bad}: {err}");
        }
        let multicast: MacAddr = "01:00:5e:00:00:01".parse().expect("parses");
        assert!(multicast.validate().expect_err("multicast").to_string().contains("not a unicast"));
        assert!(MacAddr([0; 6]).validate().is_err(), "all zeros");
    }

    #[test]
    fn fds_and_mtus_are_checked() {
        let mac: MacAddr = "02:00:00:00:00:01".parse().expect("mac");
        let net = NetConfig { tap_fd: 3, mac, mtu: DEFAULT_MTU };
        net.validate().expect("valid");
        let err = NetConfig { tap_fd: 1, ..net.clone() }.validate().expect_err("stdout").to_string();
        assert!(err.contains("tap_fd 1"), "{err}");
        for mtu in [MIN_MTU - 1, MAX_MTU + 1] {
            let err = NetConfig { mtu, ..net.clone() }.validate().expect_err("mtu").to_string();
            assert!(err.contains(&format!("MTU {mtu}")), "{err}");
        }
        let json: NetConfig = serde_json::from_str(r#"{"tap_fd":5,"mac":"02:00:00:00:00:01"}"#).expect("json");
        assert_eq!(json, NetConfig { tap_fd: 5, ..net });
    }
}
