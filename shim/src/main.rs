//! `containerd-shim-brig-v2`, started by containerd for `--runtime io.containerd.brig.v2`.

#[tokio::main]
async fn main() {
    let config = brig_shim::service::shim_config();
    containerd_shim::asynchronous::run::<brig_shim::service::Service>("io.containerd.brig.v2", Some(config)).await;
}
