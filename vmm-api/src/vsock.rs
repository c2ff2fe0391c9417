//! The host side of brig-vmm's hybrid vsock (Firecracker's design): connect to the
//! VM's Unix socket, send `CONNECT <guest port>\n`, and brig-vmm answers
//! `OK <host port>\n` once the guest accepted, or closes the connection when nothing
//! listens on that port. After `OK` the stream is the guest connection.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// brig-vmm's `OK <port>\n` is shorter than this.
const MAX_REPLY: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("cannot connect to the VM's vsock socket {path}")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("vsock handshake for guest port {port} failed")]
    Io { port: u32, source: std::io::Error },
    #[error("nothing listens on guest port {port} (yet): brig-vmm closed the connection")]
    NotListening { port: u32 },
    #[error("guest port {port} did not accept within {timeout:?}")]
    Timeout { port: u32, timeout: Duration },
    #[error("unexpected vsock handshake reply {reply:?} for guest port {port}")]
    BadReply { port: u32, reply: String },
}

fn request(port: u32) -> Vec<u8> {
    format!("CONNECT {port}\n").into_bytes()
}

/// Checks brig-vmm's reply line (with its `\n`).
fn check_reply(port: u32, reply: &[u8]) -> Result<(), VsockError> {
    if reply.starts_with(b"OK ") && reply.ends_with(b"\n") {
        return Ok(());
    }
    Err(VsockError::BadReply { port, reply: String::from_utf8_lossy(reply).into_owned() })
}

/// Reads the reply one byte at a time, so no byte of the guest's stream is consumed.
fn read_reply(port: u32, mut read_byte: impl FnMut() -> std::io::Result<Option<u8>>) -> Result<Vec<u8>, VsockError> {
    let mut reply = Vec::new();
    while reply.last() != Some(&b'\n') {
        let byte = match read_byte() {
            Ok(Some(byte)) => byte,
            Ok(None) => return Err(VsockError::NotListening { port }),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(VsockError::Timeout { port, timeout: Duration::ZERO })
            }
            Err(source) => return Err(VsockError::Io { port, source }),
        };
        reply.push(byte);
        if reply.len() > MAX_REPLY {
            return Err(VsockError::BadReply { port, reply: String::from_utf8_lossy(&reply).into_owned() });
        }
    }
    check_reply(port, &reply)?;
    Ok(reply)
}

/// Connects to guest `port`; the handshake must finish within `timeout`. The
/// stream is returned blocking, without timeouts.
pub fn connect(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, VsockError> {
    let mut stream = UnixStream::connect(uds).map_err(|source| VsockError::Connect { path: uds.into(), source })?;
    let io = |source| VsockError::Io { port, source };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    stream.write_all(&request(port)).map_err(io)?;
    read_reply(port, || {
        let mut byte = [0u8; 1];
        Ok((stream.read(&mut byte)? == 1).then_some(byte[0]))
    })
    .map_err(|e| with_timeout(e, timeout))?;
    stream.set_read_timeout(None).map_err(io)?;
    stream.set_write_timeout(None).map_err(io)?;
    Ok(stream)
}

fn with_timeout(error: VsockError, timeout: Duration) -> VsockError {
    match error {
        VsockError::Timeout { port, .. } => VsockError::Timeout { port, timeout },
        other => other,
    }
}

/// The tokio twin of [`connect`].
#[cfg(feature = "async")]
pub async fn connect_async(uds: &Path, port: u32, timeout: Duration) -> Result<tokio::net::UnixStream, VsockError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let handshake = async {
        let mut stream = tokio::net::UnixStream::connect(uds)
            .await
            .map_err(|source| VsockError::Connect { path: uds.into(), source })?;
        stream.write_all(&request(port)).await.map_err(|source| VsockError::Io { port, source })?;
        let mut reply = Vec::new();
        while reply.last() != Some(&b'\n') && reply.len() <= MAX_REPLY {
            match stream.read_u8().await {
                Ok(byte) => reply.push(byte),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(VsockError::NotListening { port })
                }
                Err(source) => return Err(VsockError::Io { port, source }),
            }
        }
        check_reply(port, &reply)?;
        Ok(stream)
    };
    tokio::time::timeout(timeout, handshake).await.map_err(|_| VsockError::Timeout { port, timeout })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn server(reply: &'static [u8]) -> (PathBuf, std::thread::JoinHandle<Vec<u8>>) {
        let path = std::env::temp_dir().join(format!("brig-vsock-{}-{}.sock", std::process::id(), reply.len()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("bind");
        let handle = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            let mut got = [0u8; 13];
            let n = conn.read(&mut got).expect("read");
            conn.write_all(reply).expect("reply");
            got[..n].to_vec()
        });
        (path, handle)
    }

    #[test]
    fn ok_connects_and_leaves_the_stream_untouched() {
        let (path, handle) = server(b"OK 1073741824\nguest bytes");
        let mut stream = connect(&path, 1024, Duration::from_secs(5)).expect("connect");
        assert_eq!(handle.join().expect("server"), b"CONNECT 1024\n");
        let mut rest = String::new();
        stream.read_to_string(&mut rest).expect("read");
        assert_eq!(rest, "guest bytes", "no byte after the reply is consumed");
        std::fs::remove_file(&path).expect("cleanup");
    }

    #[test]
    fn a_closed_connection_means_nothing_listens_and_garbage_is_named() {
        let (path, handle) = server(b"");
        let err = connect(&path, 7, Duration::from_secs(5)).expect_err("closed");
        handle.join().expect("server");
        assert!(matches!(err, VsockError::NotListening { port: 7 }), "{err}");
        std::fs::remove_file(&path).expect("cleanup");
        let (path, handle) = server(b"NO\n");
        let err = connect(&path, 7, Duration::from_secs(5)).expect_err("garbage");
        handle.join().expect("server");
        assert_eq!(err.to_string(), "unexpected vsock handshake reply \"NO\\n\" for guest port 7");
        std::fs::remove_file(&path).expect("cleanup");
    }

    #[test]
    fn a_silent_vmm_times_out() {
        let path = std::env::temp_dir().join(format!("brig-vsock-silent-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let _listener = UnixListener::bind(&path).expect("bind");
        let err = connect(&path, 9, Duration::from_millis(200)).expect_err("silent");
        assert!(matches!(err, VsockError::Timeout { port: 9, .. }), "{err}");
        std::fs::remove_file(&path).expect("cleanup");
    }
}
