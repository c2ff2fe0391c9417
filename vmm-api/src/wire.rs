//! Line framing: one JSON object and a `\n` each way, in order.

use crate::{ApiError, ErrorCode, Request, Response};

/// A line longer than this (either way) is refused; brig-vmm closes the connection.
pub const MAX_LINE: usize = 64 << 10;
/// Connections brig-vmm serves at once; more are closed on accept.
pub const MAX_CONNECTIONS: usize = 16;

/// One request as a line.
pub fn request_line(request: &Request) -> Vec<u8> {
    line(request)
}

/// One answer as a line.
pub fn response_line(response: &Response) -> Vec<u8> {
    line(response)
}

fn line(value: &impl serde::Serialize) -> Vec<u8> {
    // Serializing these types cannot fail: no maps with non-string keys, no
    // failing Serialize impls.
    let mut line = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    line
}

/// Parses one request line (without its `\n`); a bad one gives the error to answer with.
pub fn parse_request(line: &[u8]) -> Result<Request, ApiError> {
    serde_json::from_slice(line).map_err(|e| ApiError { code: ErrorCode::InvalidRequest, message: e.to_string() })
}

/// Parses one answer line (without its `\n`).
pub fn parse_response(line: &[u8]) -> Result<Response, serde_json::Error> {
    serde_json::from_slice(line)
}
