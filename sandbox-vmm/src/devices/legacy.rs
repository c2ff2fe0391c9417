//! Port-I/O devices: the 16550 serial console (COM1) and the i8042 controller,
//! which brig only uses as the guest's reset line.

use std::io;

use vm_superio::{I8042Device, Serial, Trigger};

use super::bus::BusDevice;
use super::console::ConsoleSink;
use super::EventFdTrigger;
use crate::events::{EventSender, VmEvent};
use crate::guest_warn;

pub const SERIAL_PORT: u64 = 0x3f8;
pub const SERIAL_PORT_LEN: u64 = 8;
pub const I8042_PORT: u64 = 0x60;
pub const I8042_PORT_LEN: u64 = 5;

/// COM1, interrupting through an irqfd.
pub struct SerialDevice(pub Serial<EventFdTrigger, vm_superio::serial::NoEvents, ConsoleSink>);

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SerialDevice")
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let [byte] = data {
            *byte = self.0.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let [byte] = data {
            if let Err(e) = self.0.write(offset as u8, *byte) {
                guest_warn!("serial write failed: {e:?}");
            }
        }
    }
}

/// Turns the i8042's reset trigger into a [`VmEvent::Reset`].
#[derive(Debug)]
pub struct ResetTrigger(pub EventSender);

impl Trigger for ResetTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.send(VmEvent::Reset);
        Ok(())
    }
}

pub struct I8042(pub I8042Device<ResetTrigger>);

impl std::fmt::Debug for I8042 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("I8042")
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let [byte] = data {
            *byte = self.0.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let [byte] = data {
            // ResetTrigger cannot fail.
            let _ = self.0.write(offset as u8, *byte);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::console::Console;
    use crate::events::channel_pair;
    use vmm_sys_util::eventfd::EventFd;

    #[test]
    fn i8042_reset_command_sends_reset() {
        let (tx, rx) = channel_pair().expect("channel");
        let mut dev = I8042(I8042Device::new(ResetTrigger(tx)));
        dev.write(4, &[0x00]);
        assert!(rx.rx.try_recv().is_err(), "other commands are ignored");
        dev.write(4, &[0xfe]);
        assert_eq!(rx.rx.try_recv(), Ok(VmEvent::Reset));
    }

    #[test]
    fn serial_bytes_reach_the_console() {
        let console = Console::new(None, None);
        let irq = EventFdTrigger(EventFd::new(0).expect("eventfd"));
        let mut dev = SerialDevice(Serial::new(irq, console.sink()));
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(console.tail(1), "hi");
    }
}
