//! A hostile agent's replies as the shim reads them: the shim makes one agent call
//! over a socket and the "agent" answers with the fuzzer's bytes. The first byte
//! picks the call and how the rest is framed (raw bytes, a ttrpc frame around them,
//! or a ttrpc frame around a ttrpc Response whose payload they are), so the fuzzer
//! reaches both ttrpc's framing and the shim's use of decoded answers. The call
//! must end (answer, refusal or timeout), never panic or hang.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use brig_protocol::agent_ttrpc_async::AgentClient;
use brig_protocol::ttrpc;
use brig_protocol::ttrpc::asynchronous::transport::Socket;
use brig_shim::guest::{AgentGuest, Guest, Timeouts};
use protobuf::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime"))
}

/// The first request of a fresh ttrpc client is stream 1.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&1u32.to_be_bytes());
    out.push(ttrpc::proto::MESSAGE_TYPE_RESPONSE);
    out.push(0);
    out.extend_from_slice(payload);
    out
}

fn reply(mode: u8, rest: &[u8]) -> Vec<u8> {
    match mode % 3 {
        0 => rest.to_vec(),
        1 => frame(rest),
        _ => {
            let response = ttrpc::Response { payload: rest.to_vec(), ..Default::default() };
            frame(&response.write_to_bytes().unwrap_or_default())
        }
    }
}

async fn call(guest: &AgentGuest, which: u8) {
    match which % 6 {
        0 => drop(guest.wait_process("c", None).await),
        1 => {
            if let Ok(stats) = guest.stats_container("c").await {
                let _ = brig_shim::task::stats::to_any(&stats);
            }
        }
        2 => drop(guest.list_processes("c").await),
        3 => drop(guest.oom_event().await),
        4 => drop(guest.exec_process("c", "e", Vec::new(), Default::default()).await),
        _ => drop(guest.signal_process("c", Some("e"), 9, false).await),
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let answer = reply(selector >> 4, rest);
    runtime().block_on(async move {
        let Ok((ours, mut agent)) = UnixStream::pair() else { return };
        let short = Duration::from_millis(50);
        let client = AgentClient::new(ttrpc::asynchronous::Client::new(Socket::from(ours)));
        let guest = AgentGuest::with_timeouts(client, Timeouts { call: short, oom_poll: short, shutdown: short });
        let serve = tokio::spawn(async move {
            let mut request = [0u8; 4096];
            let _ = agent.read(&mut request).await;
            let _ = agent.write_all(&answer).await;
            // Then the agent hangs up: a call the answer did not end ends here.
        });
        // Wait has no deadline of its own: the agent's end closing ends it.
        let _ = tokio::time::timeout(Duration::from_secs(1), call(&guest, selector)).await;
        serve.abort();
    });
});
