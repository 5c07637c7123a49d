#!/usr/bin/env bash
# `make test-kernel`: build the test VM if needed, boot it under QEMU (TCG; KVM is not
# required), run tests/kernel inside, and exit with the tests' exit status.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
OUT=.cache/kernel-vm
bash tools/kernel-vm/build.sh
rm -f "$OUT/status" "$OUT/cmd"
# e.g. I2X_VM_CMD="cd /work/main && .venv/bin/python -m pytest -x tests/kernel -k acquire"
[ -n "${I2X_VM_CMD:-}" ] && printf '%s\n' "$I2X_VM_CMD" > "$OUT/cmd"
log="$OUT/console.log"
accel=tcg
cpu=max
if [ -w /dev/kvm ] && [ "${I2X_VM_KVM:-0}" = 1 ]; then accel=kvm; cpu=host; fi
echo "kernel-vm: booting $(cat "$OUT/kver") ($accel), console in $log"
set +e
timeout "${I2X_VM_TIMEOUT:-900}" qemu-system-x86_64 \
    -accel "$accel" -cpu "$cpu" -smp 2 -m 1024 -nographic -no-reboot -nic none \
    -kernel "$OUT/vmlinuz" -initrd "$OUT/initrd.cpio.gz" \
    -append "console=ttyS0 quiet loglevel=3 panic=-1" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    -virtfs "local,path=$ROOT,mount_tag=project,security_model=none,multidevs=remap" \
    -virtfs "local,path=$ROOT/$OUT/root/lib/modules,mount_tag=kmods,security_model=none,readonly=on" \
    </dev/null 2>&1 | tee "$log"
qrc=${PIPESTATUS[0]}
set -e
if [ ! -f "$OUT/status" ]; then
    echo "kernel-vm: no test status (qemu exit $qrc); see $log" >&2
    exit 2
fi
rc=$(cat "$OUT/status")
echo "kernel-vm: tests/kernel exit status $rc"
exit "$rc"
