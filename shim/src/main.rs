//! `containerd-shim-brig-v2`, started by containerd for `--runtime io.containerd.brig.v2`.

#[tokio::main]
async fn main() {
    containerd_shim::asynchronous::run::<brig_shim::service::Service>("io.containerd.brig.v2", None).await;
}
