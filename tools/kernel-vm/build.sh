#!/usr/bin/env bash
# Build (once) the test VM for SAD tests: a Debian 6.1 kernel with ESP, and a busybox
# initramfs carrying the 9p modules.  Everything is cached under .cache/kernel-vm/
# (git-ignored); a rebuild happens only when missing or when this directory changes.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=.cache/kernel-vm
mkdir -p "$OUT"

need=""
for p in qemu-system-x86 busybox-static cpio kmod; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need="$need $p"
done
if [ -n "$need" ]; then
    echo "kernel-vm: installing$need"
    [ "$(id -u)" = 0 ] || { echo "kernel-vm: need root for apt-get" >&2; exit 1; }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need
fi

stamp_src=$(cat tools/kernel-vm/build.sh tools/kernel-vm/init.sh | sha256sum | cut -c1-16)
if [ -f "$OUT/initrd.cpio.gz" ] && [ -f "$OUT/vmlinuz" ] && [ "$(cat "$OUT/stamp" 2>/dev/null)" = "$stamp_src" ]; then
    echo "kernel-vm: cached ($(cat "$OUT/kver"))"
    exit 0
fi

# newest 6.1 kernel image Debian offers
pkg=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' | awk '{print $1}' | sort -V | tail -1)
if [ -z "$pkg" ]; then
    apt-get update -qq
    pkg=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' | awk '{print $1}' | sort -V | tail -1)
fi
[ -n "$pkg" ] || { echo "kernel-vm: no linux-image-6.1.0-*-amd64 in apt" >&2; exit 1; }
kver=${pkg#linux-image-}
echo "kernel-vm: kernel $kver"
mkdir -p "$OUT/dl"
if ! ls "$OUT"/dl/"${pkg}"_*.deb >/dev/null 2>&1; then
    rm -f "$OUT"/dl/*.deb
    (cd "$OUT/dl" && apt-get download "$pkg")
fi
rm -rf "$OUT/root"
mkdir -p "$OUT/root"
dpkg -x "$OUT"/dl/"${pkg}"_*.deb "$OUT/root"
depmod -b "$OUT/root" "$kver"
cp "$OUT/root/boot/vmlinuz-$kver" "$OUT/vmlinuz"
echo "$kver" > "$OUT/kver"

# insmod order (dependencies first) for a module list, paths relative to /lib/modules
resolve() {
    for m in "$@"; do
        modprobe -d "$OUT/root" -S "$kver" --show-depends "$m" 2>/dev/null || true
    done | awk '$1 == "insmod" {print $2}' | sed "s#^.*/lib/modules/#/lib/modules/#" \
         | awk '!seen[$0]++'
}

I="$OUT/initramfs"
rm -rf "$I"
mkdir -p "$I"/{bin,sbin,proc,sys,dev,tmp,lib/modules,modules,host}
cp /bin/busybox "$I/bin/busybox"
for a in sh mount insmod modprobe chroot poweroff cat grep cut tr echo mkdir sync sleep; do
    ln -sf busybox "$I/bin/$a"
done
ln -sf ../bin/busybox "$I/sbin/modprobe"
ln -sf ../bin/busybox "$I/sbin/poweroff"

# stage 1: what mounting 9p needs (copied into the initramfs)
: > "$I/modules/order"
for path in $(resolve virtio_pci 9pnet_virtio 9p); do
    rel=${path#/lib/modules/}
    mkdir -p "$I/modules/$(dirname "$rel")"
    cp "$OUT/root$path" "$I/modules/$rel"
    echo "$rel" >> "$I/modules/order"
done
# stage 2: IPsec, crypto and test netdevs (read from the 9p-mounted module tree)
resolve xfrm_user xfrm_algo esp4 esp6 ah4 ah6 xfrm_ipcomp ipcomp ipcomp6 \
        authenc authencesn echainiv seqiv gcm ghash_generic ghash-clmulni-intel ccm ctr \
        cbc hmac sha256_generic sha512_generic aes_generic aesni_intel cryptd \
        xfrm_interface veth dummy \
    | sed 's#^/lib/modules/##' > "$I/modules/order2"
echo "kernel-vm: stage-1 modules: $(wc -l < "$I/modules/order"), stage-2: $(wc -l < "$I/modules/order2")"

cp tools/kernel-vm/init.sh "$I/init"
chmod +x "$I/init"
echo "cd /work/main && .venv/bin/python -m pytest -q -p no:cacheprovider tests/kernel tests/test_xfrm_netlink.py" > "$I/cmd"
(cd "$I" && find . | cpio -o -H newc --quiet | gzip -1) > "$OUT/initrd.cpio.gz"
echo "$stamp_src" > "$OUT/stamp"
echo "kernel-vm: built $OUT/initrd.cpio.gz"
