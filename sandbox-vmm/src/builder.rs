//! Builds a VM from a validated [`VmConfig`]: KVM, memory, devices, boot
//! structures, vCPUs and the control socket — one construction path.
//!
//! Anything created here (sockets, the console file) is removed again if a later
//! step fails, so a failed start leaves nothing behind.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use linux_loader::loader::Cmdline;
use vm_memory::GuestAddress;
use vm_superio::{I8042Device, Serial};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::api::ApiServer;
use crate::arch::layout::{CMDLINE_MAX, FIRST_VIRTIO_IRQ, MMIO_SLOT_SIZE, MMIO_START, SERIAL_IRQ};
use crate::arch::x86_64::{boot, mptable};
use crate::config::{ConfigError, VmConfig};
use crate::devices::bus::{Bus, BusError};
use crate::devices::console::Console;
use crate::devices::legacy::{self, ResetTrigger, SerialDevice, I8042};
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::mmio::{MmioTransport, TransportError, QUEUE_NOTIFY};
use crate::devices::virtio::net::{Net, NetError};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::devices::virtio::VirtioDevice;
use crate::devices::EventFdTrigger;
use crate::event_loop::DeviceEvents;
use crate::events;
use crate::kvm::{self, KvmError};
use crate::memory::{self, MemoryError};
use crate::signals::SignalFd;
use crate::vcpu::{self, Vcpu, VcpuError};
use crate::vm::{Vm, VmError};
use crate::vmm::Vmm;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error(transparent)]
    Vsock(#[from] VsockError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("cannot create the console file {path}")]
    Console { path: PathBuf, source: std::io::Error },
    #[error("the host's CSPRNG (getrandom) does not answer, so there is no entropy for virtio-rng")]
    Rng(#[source] std::io::Error),
    #[error("cannot bind the control socket {path}")]
    Api { path: PathBuf, source: std::io::Error },
    #[error("cannot create an eventfd or signalfd")]
    Fd(#[source] std::io::Error),
    #[error("kernel command line: {0}")]
    Cmdline(String),
}

/// Builds the VM. On error, files this call created are removed.
pub fn build(config: VmConfig) -> Result<Vmm, BuildError> {
    config.validate()?;
    let console_path = config.console.clone();
    let console_existed = console_path.as_ref().is_some_and(|p| p.exists());
    let result = build_inner(config);
    if result.is_err() && !console_existed {
        if let Some(path) = console_path {
            let _ = std::fs::remove_file(path);
        }
    }
    result
}

fn build_inner(config: VmConfig) -> Result<Vmm, BuildError> {
    // The inherited taps first, before brig-vmm opens descriptors of its own: a
    // tap_fd that was not passed is then reported as such, never taken for one of them.
    let nets = config.net.iter().map(Net::new).collect::<Result<Vec<_>, _>>()?;
    let kvm = kvm::open()?;
    let ram = memory::create(&config.machine)?;
    match &ram.pages {
        memory::Pages::Huge(source) => log::info!("guest memory in 2 MiB pages where the host has them: {source}"),
        memory::Pages::Small(why) => {
            log::warn!("guest memory in 4 KiB pages, so every guest page is its own fault: {why}")
        }
    }
    let vm = Vm::new(&kvm, ram.memory.clone())?;
    let (events_tx, events_rx) = events::channel_pair().map_err(BuildError::Fd)?;
    // Before any thread exists, so every thread inherits the blocked mask.
    let signals = SignalFd::new().map_err(BuildError::Fd)?;

    let console_file = match &config.console {
        Some(path) => Some(open_console(path)?),
        None => None,
    };
    let console = Console::new(console_file, Some(events_tx.clone()));

    let mut io_bus = Bus::default();
    let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(BuildError::Fd)?;
    vm.register_irqfd(&serial_irq, SERIAL_IRQ)?;
    let serial = SerialDevice(Serial::new(EventFdTrigger(serial_irq), console.sink()));
    io_bus.insert(legacy::SERIAL_PORT, legacy::SERIAL_PORT_LEN, Arc::new(Mutex::new(serial)))?;
    let i8042 = I8042(I8042Device::new(ResetTrigger(events_tx.clone())));
    io_bus.insert(legacy::I8042_PORT, legacy::I8042_PORT_LEN, Arc::new(Mutex::new(i8042)))?;

    let mut cmdline = Cmdline::new(CMDLINE_MAX).map_err(|e| BuildError::Cmdline(e.to_string()))?;
    cmdline.insert_str(config.boot.base_cmdline()).map_err(|e| BuildError::Cmdline(e.to_string()))?;

    // Block devices first, so the guest names them vda, vdb, … in configuration order.
    let mut virtio: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for block in &config.block {
        virtio.push(Box::new(Block::new(block)?));
    }
    if let Some(vsock) = &config.vsock {
        virtio.push(Box::new(Vsock::new(vsock)?));
    }
    if config.rng {
        virtio.push(Box::new(Rng::new().map_err(BuildError::Rng)?));
    }
    for net in nets {
        virtio.push(Box::new(net));
    }
    let mut devices = DeviceEvents::new().map_err(BuildError::Fd)?;
    let mut mmio_bus = Bus::default();
    let mut transports = Vec::new();
    for (slot, device) in virtio.into_iter().enumerate() {
        let base = MMIO_START + slot as u64 * MMIO_SLOT_SIZE;
        let irq = FIRST_VIRTIO_IRQ + slot as u32;
        let transport = devices.register_with(|ops| {
            let transport = MmioTransport::new(device, ram.memory.clone(), ops)?;
            vm.register_irqfd(transport.interrupt().irqfd(), irq)?;
            for (queue, evt) in transport.queue_evts().iter().enumerate() {
                vm.register_mmio_ioevent(evt, base + QUEUE_NOTIFY, queue as u32)?;
            }
            Ok::<_, BuildError>(transport)
        })?;
        mmio_bus.insert(base, MMIO_SLOT_SIZE, transport.clone())?;
        cmdline
            .add_virtio_mmio_device(MMIO_SLOT_SIZE, GuestAddress(base), irq, None)
            .map_err(|e| BuildError::Cmdline(e.to_string()))?;
        transports.push(transport);
    }

    let layout = boot::load(&ram.memory, ram.bytes, &config.boot.kernel, config.boot.initramfs.as_deref(), &cmdline)?;
    mptable::setup(&ram.memory, config.machine.vcpus)?;

    vcpu::install_kick_handler()?;
    let mut vcpus = Vec::new();
    for index in 0..config.machine.vcpus {
        let vcpu = Vcpu::new(index, vm.create_vcpu(index)?);
        vcpu.configure(&kvm, config.machine.vcpus, layout.entry)?;
        vcpus.push(vcpu);
    }

    let api = match &config.api_socket {
        Some(path) => Some(ApiServer::bind(path).map_err(|source| BuildError::Api { path: path.clone(), source })?),
        None => None,
    };
    log::info!(
        "VM built: {} vCPUs, {} MiB, kernel entry {:#x}, command line `{}`",
        config.machine.vcpus,
        config.machine.memory_mib,
        layout.entry,
        cmdline.as_cstring().map(|c| c.to_string_lossy().into_owned()).unwrap_or_default()
    );
    Ok(Vmm {
        config,
        vm,
        vcpus,
        io_bus: Arc::new(io_bus),
        mmio_bus: Arc::new(mmio_bus),
        devices,
        transports,
        console,
        events_tx,
        events_rx,
        api,
        signals,
    })
}

fn open_console(path: &std::path::Path) -> Result<File, BuildError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| BuildError::Console { path: path.into(), source })
}
