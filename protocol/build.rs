//! Generates the agent API's message types and ttrpc stubs into OUT_DIR.
//!
//! Messages and the blocking client/server come from one run; the async stubs from
//! a second run, of which only `agent_ttrpc.rs` is kept (as `async/agent_ttrpc.rs`),
//! so both flavours share one set of message types.

use std::path::{Path, PathBuf};

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn generate(out: &Path, async_all: bool) {
    std::fs::create_dir_all(out).expect("create the output directory");
    Codegen::new()
        .inputs(["proto/agent.proto"])
        .include("proto")
        .rust_protobuf()
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .customize(Customize { async_all, ..Default::default() })
        .out_dir(out)
        .run()
        .expect("generate the agent API from proto/agent.proto");
    // `include!` cannot take inner attributes or inner doc comments.
    for entry in std::fs::read_dir(out).expect("read the output directory") {
        let path = entry.expect("directory entry").path();
        let text = std::fs::read_to_string(&path).expect("read generated code");
        let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with("#!") && !l.starts_with("//!")).collect();
        std::fs::write(&path, kept.join("\n")).expect("write generated code");
    }
}

fn main() {
    println!("cargo:rerun-if-changed=proto/agent.proto");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    generate(&out.join("sync"), false);
    generate(&out.join("async"), true);
}
