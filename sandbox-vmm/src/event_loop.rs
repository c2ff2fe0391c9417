//! epoll dispatch for device events.
//!
//! Devices register file descriptors (queue eventfds, host sockets) through an
//! [`EventOps`] handle that tags each with the device's index. The whole device
//! epoll set is nested in the VMM's main epoll as a single descriptor, so pausing
//! the VM stops all device processing by removing that one descriptor.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::devices::bus::lock;

/// Something that owns file descriptors in the device epoll set.
pub trait EventSubscriber: Send {
    /// `fd`, registered by this subscriber, is ready with `events`.
    fn on_event(&mut self, fd: RawFd, events: EventSet, ops: &EventOps);
}

/// A subscriber's handle on the device epoll set.
#[derive(Debug, Clone)]
pub struct EventOps {
    epoll: Arc<Epoll>,
    owner: u32,
}

fn token(owner: u32, fd: RawFd) -> u64 {
    (u64::from(owner) << 32) | u64::from(fd as u32)
}

impl EventOps {
    pub fn add(&self, fd: RawFd, events: EventSet) -> io::Result<()> {
        self.epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(events, token(self.owner, fd)))
    }

    pub fn modify(&self, fd: RawFd, events: EventSet) -> io::Result<()> {
        self.epoll.ctl(ControlOperation::Modify, fd, EpollEvent::new(events, token(self.owner, fd)))
    }

    pub fn remove(&self, fd: RawFd) -> io::Result<()> {
        self.epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }

    /// A handle on an epoll set of its own, for devices under test.
    #[cfg(test)]
    pub fn detached() -> EventOps {
        EventOps { epoll: Arc::new(Epoll::new().expect("epoll")), owner: 0 }
    }
}

/// The device epoll set and its subscribers.
pub struct DeviceEvents {
    epoll: Arc<Epoll>,
    subscribers: Vec<Arc<Mutex<dyn EventSubscriber>>>,
}

impl std::fmt::Debug for DeviceEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceEvents({} subscribers)", self.subscribers.len())
    }
}

impl DeviceEvents {
    pub fn new() -> io::Result<DeviceEvents> {
        Ok(DeviceEvents { epoll: Arc::new(Epoll::new()?), subscribers: Vec::new() })
    }

    /// Builds a subscriber with its handle and adds it; a subscriber that fails to
    /// build is not added. The handle's identity is decided here, so a subscriber can
    /// register its descriptors while it is being built.
    pub fn register_with<S, E>(&mut self, build: impl FnOnce(EventOps) -> Result<S, E>) -> Result<Arc<Mutex<S>>, E>
    where
        S: EventSubscriber + 'static,
    {
        let owner = u32::try_from(self.subscribers.len()).expect("fewer than 2^32 devices (MAX_DEVICES is 19)");
        let subscriber = Arc::new(Mutex::new(build(EventOps { epoll: self.epoll.clone(), owner })?));
        self.subscribers.push(subscriber.clone());
        Ok(subscriber)
    }

    /// Dispatches whatever is ready now, without waiting.
    pub fn dispatch(&self) -> io::Result<usize> {
        let mut events = [EpollEvent::default(); 64];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(0),
            Err(e) => return Err(e),
        };
        for event in &events[..n] {
            let data = event.data();
            let owner = (data >> 32) as usize;
            let fd = data as u32 as RawFd;
            if let Some(subscriber) = self.subscribers.get(owner) {
                let ops = EventOps { epoll: self.epoll.clone(), owner: owner as u32 };
                lock(subscriber).on_event(fd, event.event_set(), &ops);
            }
        }
        Ok(n)
    }
}

impl AsRawFd for DeviceEvents {
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EventFd;

    struct Counter {
        evt: EventFd,
        seen: usize,
        ops: EventOps,
    }

    /// Registers its eventfd while it is built, as the virtio transports do.
    fn counter(ops: EventOps, evt: EventFd) -> std::io::Result<Counter> {
        ops.add(evt.as_raw_fd(), EventSet::IN)?;
        Ok(Counter { evt, seen: 0, ops })
    }

    impl EventSubscriber for Counter {
        fn on_event(&mut self, fd: RawFd, events: EventSet, _ops: &EventOps) {
            assert_eq!(fd, self.evt.as_raw_fd());
            assert!(events.contains(EventSet::IN));
            self.evt.read().expect("read");
            self.seen += 1;
        }
    }

    #[test]
    fn events_reach_their_owner() {
        let mut events = DeviceEvents::new().expect("epoll");
        let (a, b) = (EventFd::new(0).expect("evt"), EventFd::new(0).expect("evt"));
        let a = events.register_with(|ops| counter(ops, a)).expect("a");
        let b = events.register_with(|ops| counter(ops, b)).expect("b");
        let ops_b = lock(&b).ops.clone();
        lock(&b).evt.write(1).expect("write");
        assert_eq!(events.dispatch().expect("dispatch"), 1);
        assert_eq!((lock(&a).seen, lock(&b).seen), (0, 1));
        ops_b.remove(lock(&b).evt.as_raw_fd()).expect("remove");
        lock(&b).evt.write(1).expect("write");
        assert_eq!(events.dispatch().expect("dispatch"), 0);
    }
}

#[cfg(test)]
mod failed_build {
    use super::*;

    struct Never;

    impl EventSubscriber for Never {
        fn on_event(&mut self, _fd: RawFd, _events: EventSet, _ops: &EventOps) {}
    }

    #[test]
    fn a_subscriber_that_fails_to_build_is_not_added() {
        let mut events = DeviceEvents::new().expect("epoll");
        let failed: Result<Arc<Mutex<Never>>, &str> = events.register_with(|_| Err("no"));
        assert!(failed.is_err());
        assert_eq!(events.subscribers.len(), 0);
        events.register_with(|_| Ok::<_, ()>(Never)).expect("added");
        assert_eq!(events.subscribers.len(), 1);
    }
}
