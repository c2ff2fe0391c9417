//! One vsock stream between a guest port and a host Unix socket, with virtio-vsock
//! credit accounting in both directions.
//!
//! Guest → host: payload is written to the host stream, or buffered up to
//! [`BUF_ALLOC`] bytes (the credit we advertise) while the host is slow. A guest
//! that sends past its credit is hostile and gets reset.
//! Host → guest: we read from the host stream only as much as the guest's
//! advertised credit allows.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use serde::Serialize;

use super::packet::{
    Header, HOST_CID, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND,
    TYPE_STREAM,
};

/// Receive buffer we advertise per connection (guest → host bytes in flight).
pub const BUF_ALLOC: u32 = 256 << 10;
/// Tell the guest about freed space once its view of our free space drops below this.
const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ConnState {
    /// The host asked for a guest port; our REQUEST is pending or awaiting RESPONSE.
    LocalInit,
    Established,
}

/// What the connection wants from epoll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Interest {
    pub read: bool,
    pub write: bool,
}

#[derive(Debug)]
pub enum Verdict {
    Keep,
    /// Close the host stream and reset the guest side.
    Reset,
}

#[derive(Debug)]
pub struct Connection {
    pub stream: UnixStream,
    pub local_port: u32,
    pub peer_port: u32,
    pub state: ConnState,
    pending_request: bool,
    pending_response: bool,
    pending_credit_update: bool,
    pending_shutdown: bool,
    /// Handshake reply (`OK <port>\n`) owed to the host, written before any data.
    reply: Vec<u8>,
    /// Guest payload not yet written to the host stream.
    to_host: VecDeque<u8>,
    /// Host bytes that arrived with the `CONNECT` line, sent before reading the stream.
    early: Vec<u8>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    guest_sent: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    rx_cnt: Wrapping<u32>,
    guest_shutdown: u32,
    host_write_closed: bool,
    host_eof: bool,
    /// epoll said the host stream is readable and no read has drained it since.
    pub readable: bool,
    /// Current epoll registration.
    pub registered: Interest,
}

impl Connection {
    fn new(stream: UnixStream, local_port: u32, peer_port: u32, state: ConnState) -> Connection {
        Connection {
            stream,
            local_port,
            peer_port,
            state,
            pending_request: false,
            pending_response: false,
            pending_credit_update: false,
            pending_shutdown: false,
            reply: Vec::new(),
            to_host: VecDeque::new(),
            early: Vec::new(),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            guest_sent: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            guest_shutdown: 0,
            host_write_closed: false,
            host_eof: false,
            readable: false,
            registered: Interest::default(),
        }
    }

    /// The host connected and asked for `peer_port`; `early` is what followed its `CONNECT` line.
    pub fn host_initiated(stream: UnixStream, local_port: u32, peer_port: u32, early: Vec<u8>) -> Connection {
        let mut conn = Connection::new(stream, local_port, peer_port, ConnState::LocalInit);
        conn.pending_request = true;
        conn.early = early;
        conn
    }

    /// The guest connected to `local_port` and we reached the host listener.
    pub fn guest_initiated(stream: UnixStream, request: &Header) -> Connection {
        let mut conn = Connection::new(stream, request.dst_port, request.src_port, ConnState::Established);
        conn.pending_response = true;
        conn.update_peer_credit(request);
        conn
    }

    pub fn update_peer_credit(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
    }

    /// Bytes the guest can still take from us.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// The guest accepted our REQUEST.
    pub fn on_response(&mut self) -> Verdict {
        if self.state != ConnState::LocalInit {
            return Verdict::Reset;
        }
        self.state = ConnState::Established;
        self.reply = format!("OK {}\n", self.local_port).into_bytes();
        self.flush_to_host()
    }

    /// Payload from the guest.
    pub fn on_data(&mut self, data: &[u8]) -> Verdict {
        if self.state != ConnState::Established || self.guest_shutdown & SHUTDOWN_SEND != 0 {
            return Verdict::Reset;
        }
        // The guest may only have BUF_ALLOC bytes unacknowledged by fwd_cnt.
        let unacked = (self.guest_sent - self.fwd_cnt).0 as usize + data.len();
        if unacked > BUF_ALLOC as usize {
            return Verdict::Reset;
        }
        self.guest_sent += Wrapping(data.len() as u32);
        self.to_host.extend(data);
        self.flush_to_host()
    }

    pub fn on_credit_request(&mut self) {
        self.pending_credit_update = true;
    }

    /// The guest will send (`SHUTDOWN_SEND`) and/or receive (`SHUTDOWN_RCV`) no more.
    pub fn on_shutdown(&mut self, flags: u32) -> Verdict {
        self.guest_shutdown |= flags & (SHUTDOWN_SEND | SHUTDOWN_RCV);
        self.flush_to_host()
    }

    /// Writes what is owed to the host stream, as far as it takes it.
    pub fn flush_to_host(&mut self) -> Verdict {
        while !self.reply.is_empty() {
            match self.stream.write(&self.reply) {
                Ok(n) => drop(self.reply.drain(..n)),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Verdict::Keep,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Verdict::Reset,
            }
        }
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match self.stream.write(front) {
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Verdict::Reset,
            }
        }
        if self.to_host.is_empty() && self.guest_shutdown & SHUTDOWN_SEND != 0 && !self.host_write_closed {
            self.host_write_closed = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        let guest_done = self.guest_shutdown == SHUTDOWN_SEND | SHUTDOWN_RCV;
        let both_done = self.host_eof && self.guest_shutdown & SHUTDOWN_SEND != 0 && !self.pending_shutdown;
        if self.to_host.is_empty() && (guest_done || both_done) {
            return Verdict::Reset;
        }
        Verdict::Keep
    }

    fn needs_credit_update(&self) -> bool {
        let unreported = (self.fwd_cnt - self.last_fwd_cnt_sent).0;
        let guest_view_used = (self.guest_sent - self.last_fwd_cnt_sent).0;
        unreported > 0 && BUF_ALLOC.saturating_sub(guest_view_used) < CREDIT_UPDATE_THRESHOLD
    }

    fn wants_read(&self) -> bool {
        self.state == ConnState::Established && !self.host_eof && self.peer_credit() > 0
    }

    /// Whether [`next_packet`](Self::next_packet) may have something to send.
    pub fn has_work(&self) -> bool {
        self.pending_request
            || self.pending_response
            || self.pending_shutdown
            || self.pending_credit_update
            || self.needs_credit_update()
            || (self.wants_read() && (self.readable || !self.early.is_empty()))
    }

    pub fn interest(&self, rx_starved: bool) -> Interest {
        Interest {
            read: self.wants_read() && !rx_starved && self.early.is_empty(),
            write: !self.reply.is_empty() || !self.to_host.is_empty(),
        }
    }

    pub fn header(&self, guest_cid: u64, op: u16) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: 0,
            kind: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// The next packet for the guest, with up to `buf.len()` payload bytes read into `buf`.
    /// `Err` means the host stream failed and the connection must be reset.
    pub fn next_packet(&mut self, guest_cid: u64, buf: &mut [u8]) -> io::Result<Option<Header>> {
        let hdr = if std::mem::take(&mut self.pending_request) {
            self.header(guest_cid, OP_REQUEST)
        } else if std::mem::take(&mut self.pending_response) {
            self.header(guest_cid, OP_RESPONSE)
        } else if let Some(hdr) = self.read_data(guest_cid, buf)? {
            hdr
        } else if std::mem::take(&mut self.pending_shutdown) {
            let mut hdr = self.header(guest_cid, OP_SHUTDOWN);
            hdr.flags = SHUTDOWN_SEND;
            hdr
        } else if std::mem::take(&mut self.pending_credit_update) || self.needs_credit_update() {
            self.header(guest_cid, OP_CREDIT_UPDATE)
        } else {
            return Ok(None);
        };
        self.last_fwd_cnt_sent = self.fwd_cnt;
        Ok(Some(hdr))
    }

    fn read_data(&mut self, guest_cid: u64, buf: &mut [u8]) -> io::Result<Option<Header>> {
        if !self.wants_read() || buf.is_empty() {
            return Ok(None);
        }
        let room = buf.len().min(self.peer_credit() as usize);
        let n = if !self.early.is_empty() {
            let n = room.min(self.early.len());
            buf[..n].copy_from_slice(&self.early[..n]);
            self.early.drain(..n);
            n
        } else if self.readable {
            match self.stream.read(&mut buf[..room]) {
                Ok(0) => {
                    self.host_eof = true;
                    self.pending_shutdown = true;
                    return Ok(None);
                }
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                    self.readable = false;
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        } else {
            return Ok(None);
        };
        self.rx_cnt += Wrapping(n as u32);
        let mut hdr = self.header(guest_cid, OP_RW);
        hdr.len = n as u32;
        Ok(Some(hdr))
    }

    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "local_port": self.local_port,
            "peer_port": self.peer_port,
            "state": self.state,
            "fwd_cnt": self.fwd_cnt.0,
            "rx_cnt": self.rx_cnt.0,
            "buffered_to_host": self.to_host.len(),
            "guest_shutdown": self.guest_shutdown,
            "host_eof": self.host_eof,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Connection, UnixStream) {
        let (ours, theirs) = UnixStream::pair().expect("pair");
        ours.set_nonblocking(true).expect("nonblocking");
        let request = Header { src_port: 1024, dst_port: 5000, buf_alloc: 4096, ..Default::default() };
        (Connection::guest_initiated(ours, &request), theirs)
    }

    #[test]
    fn guest_data_reaches_the_host_and_is_counted() {
        let (mut conn, mut host) = pair();
        assert!(matches!(conn.on_data(b"hello"), Verdict::Keep));
        let mut buf = [0u8; 5];
        host.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"hello");
        assert_eq!(conn.fwd_cnt.0, 5);
    }

    #[test]
    fn a_guest_exceeding_its_credit_is_reset() {
        let (mut conn, _host) = pair();
        // The host never reads; the socket buffer fills, then our buffer.
        let chunk = vec![0u8; 64 << 10];
        let mut sent = 0usize;
        let verdict = loop {
            match conn.on_data(&chunk) {
                Verdict::Keep => sent += chunk.len(),
                Verdict::Reset => break Verdict::Reset,
            }
            assert!(sent < 64 << 20, "never reset");
        };
        assert!(matches!(verdict, Verdict::Reset));
        assert!(conn.to_host.len() <= BUF_ALLOC as usize);
    }

    #[test]
    fn host_reads_respect_the_guests_credit() {
        let (mut conn, mut host) = pair();
        host.write_all(&[7u8; 10_000]).expect("write");
        conn.readable = true;
        let mut buf = vec![0u8; 8192];
        assert_eq!(conn.next_packet(3, &mut buf).expect("packet").map(|h| h.op), Some(OP_RESPONSE));
        let hdr = conn.next_packet(3, &mut buf).expect("packet").expect("data");
        assert_eq!((hdr.op, hdr.len), (OP_RW, 4096), "limited by the guest's buf_alloc");
        assert_eq!(conn.peer_credit(), 0);
        assert!(conn.next_packet(3, &mut buf).expect("packet").is_none(), "no credit, nothing to send");
        conn.update_peer_credit(&Header { buf_alloc: 4096, fwd_cnt: 4096, ..Default::default() });
        assert_eq!(conn.next_packet(3, &mut buf).expect("packet").map(|h| h.len), Some(4096));
    }

    #[test]
    fn host_eof_becomes_a_shutdown_and_guest_close_becomes_reset() {
        let (mut conn, host) = pair();
        drop(host);
        conn.readable = true;
        let mut buf = vec![0u8; 64];
        let _response = conn.next_packet(3, &mut buf).expect("packet");
        let hdr = conn.next_packet(3, &mut buf).expect("packet").expect("shutdown");
        assert_eq!((hdr.op, hdr.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
        assert!(matches!(conn.on_shutdown(SHUTDOWN_SEND | SHUTDOWN_RCV), Verdict::Reset));
    }

    #[test]
    fn a_response_to_a_host_request_sends_ok_with_our_port() {
        let (ours, mut host) = UnixStream::pair().expect("pair");
        let mut conn = Connection::host_initiated(ours, 0x4000_0000, 1024, Vec::new());
        let mut buf = [0u8; 16];
        assert_eq!(conn.next_packet(3, &mut buf).expect("p").map(|h| h.op), Some(OP_REQUEST));
        assert!(matches!(conn.on_response(), Verdict::Keep));
        let mut line = [0u8; 14];
        host.read_exact(&mut line).expect("read");
        assert_eq!(&line, b"OK 1073741824\n");
        assert!(matches!(conn.on_response(), Verdict::Reset), "a second RESPONSE is a protocol error");
    }
}
