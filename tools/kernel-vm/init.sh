#!/bin/sh
# /init of the test VM (busybox).  Loads the 9p and IPsec modules, mounts the host's
# root read-only and the project read-write over 9p, then runs the kernel tests in a
# chroot of the host tree (same Python, venv and iproute2 as the host) and powers off.
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "i2x-vm: kernel $(uname -r)"
while read -r ko; do
    insmod "/modules/$ko" 2>/dev/null || true
done < /modules/order
mkdir -p /host
OPTS=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o "$OPTS,ro,cache=loose" hostroot /host || { echo "i2x-vm: 9p root failed"; poweroff -f; }
mount -t 9p -o "$OPTS,cache=none" project /host/work/main || { echo "i2x-vm: 9p project failed"; poweroff -f; }
mount -t 9p -o "$OPTS,ro,cache=loose" kmods /lib/modules 2>/dev/null
# IPsec/crypto/netdev modules from the kernel package (order resolved on the host)
while read -r ko; do
    insmod "/lib/modules/$ko" 2>/dev/null || true
done < /modules/order2
echo /sbin/modprobe > /proc/sys/kernel/modprobe
for d in proc sys dev; do mount --bind /$d /host/$d; done
mount -t tmpfs tmp /host/tmp
mount -t tmpfs run /host/run
mkdir -p /host/run/netns /host/dev/shm
mount -t tmpfs shm /host/dev/shm
grep -E '^(esp4|esp6|xfrm_user|gcm|authenc) ' /proc/modules | cut -d' ' -f1 | tr '\n' ' '
echo
CMD=$(cat /cmd)
# run.sh may override the command (I2X_VM_CMD) through the project share
[ -s /host/work/main/.cache/kernel-vm/cmd ] && CMD=$(cat /host/work/main/.cache/kernel-vm/cmd)
chroot /host /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root PYTHONDONTWRITEBYTECODE=1 TERM=dumb I2X_IN_VM=1 /bin/sh -c "$CMD"
rc=$?
echo "I2X-KERNEL-TESTS-EXIT=$rc"
echo "$rc" > /host/work/main/.cache/kernel-vm/status
sync
poweroff -f
