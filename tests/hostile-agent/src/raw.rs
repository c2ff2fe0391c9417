//! The modes that break the wire itself: no answers, random bytes, a frame header
//! that claims more than any frame may hold. ttrpc frames are read by hand here
//! (10-byte header: length, stream id, type, flags; then a protobuf `Request`).

use std::fs::File;
use std::io::{Read, Write};

use brig_protocol::agent::PingResponse;
use brig_protocol::ttrpc::{self, Code};
use brig_protocol::{AGENT_VSOCK_PORT, API_MAJOR, API_MINOR};
use protobuf::Message;

use crate::Mode;

const HEADER_LEN: usize = 10;
const MESSAGE_TYPE_RESPONSE: u8 = 0x2;
/// ttrpc's own limit; a request claiming more is not read.
const MESSAGE_LENGTH_MAX: usize = 4 << 20;
/// How many random bytes answer one request in `garbage` mode.
const GARBAGE_LEN: usize = 64 << 10;

/// Serves the agent port in `mode` (`silent`, `garbage` or `oversized`), forever.
pub fn serve(mode: Mode) -> Result<(), String> {
    let listener = crate::listen_vsock(AGENT_VSOCK_PORT)?;
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    loop {
        let conn = crate::accept_one(&listener)?;
        println!("hostile: agent connection ({mode:?})");
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let rng = XorShift(seed | 1);
        std::thread::spawn(move || {
            let why = match mode {
                Mode::Silent => silent(conn),
                Mode::Garbage => garbage(conn, rng),
                _ => oversized(conn),
            };
            println!("hostile: agent connection ended: {why}");
        });
    }
}

/// Reads everything, answers nothing.
fn silent(mut conn: File) -> String {
    match std::io::copy(&mut conn, &mut std::io::sink()) {
        Ok(n) => format!("closed after {n} bytes"),
        Err(e) => e.to_string(),
    }
}

/// Random bytes for every read that brought something.
fn garbage(mut conn: File, mut rng: XorShift) -> String {
    let mut buf = vec![0u8; 64 << 10];
    let mut noise = vec![0u8; GARBAGE_LEN];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return "closed".into(),
            Ok(_) => {
                rng.fill(&mut noise);
                if let Err(e) = conn.write_all(&noise) {
                    return e.to_string();
                }
            }
            Err(e) => return e.to_string(),
        }
    }
}

/// A proper answer to `Ping`; to anything else, a response header claiming
/// `u32::MAX` bytes of payload, followed by a few.
fn oversized(mut conn: File) -> String {
    loop {
        let (stream_id, request) = match read_request(&mut conn) {
            Ok(frame) => frame,
            Err(e) => return e,
        };
        let written = if request.method == "Ping" {
            let pong = PingResponse {
                agent_version: "hostile".into(),
                api_major: API_MAJOR,
                api_minor: API_MINOR,
                ..Default::default()
            };
            write_response(&mut conn, stream_id, &pong)
        } else {
            println!("hostile: answering {} with a 4 GiB frame header", request.method);
            let mut frame = header(u32::MAX, stream_id);
            frame.extend_from_slice(&[0xAB; 64]);
            conn.write_all(&frame).map_err(|e| e.to_string())
        };
        if let Err(e) = written {
            return e;
        }
    }
}

fn header(length: u32, stream_id: u32) -> Vec<u8> {
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(&length.to_be_bytes());
    header.extend_from_slice(&stream_id.to_be_bytes());
    header.extend_from_slice(&[MESSAGE_TYPE_RESPONSE, 0]);
    header
}

/// One request frame: its stream id and the decoded `Request`.
fn read_request(conn: &mut File) -> Result<(u32, ttrpc::Request), String> {
    let mut head = [0u8; HEADER_LEN];
    conn.read_exact(&mut head).map_err(|e| format!("reading a frame header: {e}"))?;
    let length = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let stream_id = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    if length > MESSAGE_LENGTH_MAX {
        return Err(format!("a request of {length} bytes"));
    }
    let mut body = vec![0u8; length];
    conn.read_exact(&mut body).map_err(|e| format!("reading a frame: {e}"))?;
    let request = ttrpc::Request::parse_from_bytes(&body).map_err(|e| format!("decoding a request: {e}"))?;
    Ok((stream_id, request))
}

fn write_response(conn: &mut File, stream_id: u32, payload: &impl Message) -> Result<(), String> {
    let response = ttrpc::Response {
        status: Some(ttrpc::get_status(Code::OK, "")).into(),
        payload: payload.write_to_bytes().map_err(|e| e.to_string())?,
        ..Default::default()
    };
    let body = response.write_to_bytes().map_err(|e| e.to_string())?;
    let mut frame = header(body.len() as u32, stream_id);
    frame.extend_from_slice(&body);
    conn.write_all(&frame).map_err(|e| e.to_string())
}

/// A small deterministic generator: the garbage is the same on every run.
struct XorShift(u64);

impl XorShift {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let bytes = self.0.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}
