#!/bin/busybox sh
# PID 1 of brig's nested KVM test host (see xtask/src/testhost/mod.rs and docs/testing.md).
# The host's / arrives read-only over 9p and becomes the lower layer of a tmpfs-backed
# overlay; the run directory and the work tree arrive read-write at their own paths.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
log() { echo "brig-testhost: $*" > /dev/ttyS0; }
die() { log "FATAL: $*"; poweroff -f; }

for m in $(cat /modules/order); do insmod "/modules/$m" || log "insmod $m failed"; done
[ -c /dev/kvm ] || die "no /dev/kvm after loading kvm-amd (does the CPU model have svm?)"

RUN= TREE=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        brig.run=*) RUN=${arg#brig.run=} ;;
        brig.worktree=*) TREE=${arg#brig.worktree=} ;;
    esac
done
[ -n "$RUN" ] || die "no brig.run= on the kernel command line"

p9=trans=virtio,version=9p2000.L,msize=262144,cache=none
mount -t 9p -o "$p9,ro" hostroot /lower || die "cannot mount the host root over 9p"
mount -t tmpfs -o size=80%,mode=755 upper /upper
mkdir -p /upper/data /upper/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work /newroot \
    || die "cannot mount the overlay root"

R=/newroot
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts $R/dev/pts
mount -t tmpfs shm $R/dev/shm
# containerd's overlayfs snapshotter cannot sit on an overlay upper: give it tmpfs.
for d in /tmp /run /var/lib/containerd /var/lib/brig; do
    mkdir -p "$R$d" && mount -t tmpfs -o mode=755 tmpfs "$R$d"
done
chmod 1777 $R/tmp
mkdir -p "$R$RUN" && mount -t 9p -o "$p9,rw" run "$R$RUN" || die "cannot mount the run directory"
if [ -n "$TREE" ]; then
    mkdir -p "$R$TREE" && mount -t 9p -o "$p9,rw" worktree "$R$TREE" || die "cannot mount the work tree"
fi

hostname brig-testhost
# Like a host tuned for brig (ADR 014): memfds advised for huge pages get them, so an
# unjailed brig-vmm's guest RAM is in 2 MiB pages as a jailed one's (its own tmpfs) is.
echo advise > /sys/kernel/mm/transparent_hugepage/shmem_enabled
ip link set lo up
# Hold the console open from here on: the tty's settings last only while it is open,
# and without `raw` (-opost) every `\n` the command writes would come back as `\r\n`.
exec 3>/dev/hvc0
stty -F /dev/hvc0 raw -echo
cut -d" " -f1 /proc/uptime > "$R$RUN/ready.tmp" && mv "$R$RUN/ready.tmp" "$R$RUN/ready"
# A heartbeat for kvm-host: a test host whose clock stops ticking is wedged, not busy.
( while sleep 5; do cut -d" " -f1 /proc/uptime > "$R$RUN/heartbeat"; done ) &
log "ready at uptime $(cat "$R$RUN/ready")s"

chroot $R /bin/bash "$RUN/run.sh" < /dev/null >&3 2>&1
echo $? > "$R$RUN/status"
log "command exited with status $(cat "$R$RUN/status")"
sync
poweroff -f
