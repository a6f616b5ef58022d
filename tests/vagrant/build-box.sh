#!/usr/bin/env bash
# Build the Debian 12 Vagrant box (provider libvirt) from the real-VM test's image.
#
#   tests/vagrant/build-box.sh OUT_DIR      prints OUT_DIR/netpolicy-debian12.box
#
# The image is vm/build-image.sh's (one image for both VM tests): an ext4 file system without a
# partition table, booted by its own kernel and initramfs. The box carries them and its own
# Vagrantfile points libvirt at them (kernel/initrd/cmd_line), so the project's Vagrantfile stays
# the one a user runs with debian/bookworm64. Edited without booting (debugfs on a raw copy):
#   - the `vagrant` user (uid 1001, group sudo) with Vagrant's insecure public key, NOPASSWD sudo
#   - DHCP on every Ethernet interface (Vagrant's management network) instead of the image's
#     static 10.20.0.10; Vagrant writes 50-vagrant-*.network for the private network, which
#     sorts before this 99- file and so wins for that interface.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
out="${1:?usage: build-box.sh OUT_DIR}"
image="$("$here/../../vm/build-image.sh")"
insecure="$(find /usr/share/rubygems-integration /usr/lib/ruby /opt/vagrant -path '*vagrant*/keys/vagrant.pub' 2>/dev/null | head -1 || true)"
[ -n "$insecure" ] || { echo "build-box.sh: Vagrant's keys/vagrant.pub not found" >&2; exit 1; }

mkdir -p "$out"
work="$(mktemp -d "$out/box.XXXXXX")"
trap 'rm -rf "$work"' EXIT
raw="$work/box.raw"
qemu-img convert -O raw "$image/rootfs.qcow2" "$raw"

dfs() { debugfs -w -R "$1" "$raw" >/dev/null 2>"$work/debugfs.err" || { cat "$work/debugfs.err" >&2; exit 1; }; }
get() { debugfs -R "cat $1" "$raw" 2>/dev/null; }
# put PATH LOCALFILE MODE UID GID: replace (or create) a file in the image.
put() {
    debugfs -w -R "rm $1" "$raw" >/dev/null 2>&1 || true
    dfs "write $2 $1"
    dfs "sif $1 mode 0100$3"
    dfs "sif $1 uid $4"
    dfs "sif $1 gid $5"
}
mkd() { dfs "mkdir $1"; dfs "sif $1 mode 040$2"; dfs "sif $1 uid $3"; dfs "sif $1 gid $4"; }

get /etc/passwd > "$work/passwd"; echo "vagrant:x:1001:1001:vagrant:/home/vagrant:/bin/bash" >> "$work/passwd"
get /etc/shadow > "$work/shadow"; echo "vagrant:*:19000:0:99999:7:::" >> "$work/shadow"
get /etc/group | sed -E 's/^(sudo:x:27:.*[^:])$/\1,vagrant/; s/^sudo:x:27:$/sudo:x:27:vagrant/' > "$work/group"
echo "vagrant:x:1001:" >> "$work/group"
shadow_gid="$(get /etc/group | awk -F: '$1 == "shadow" {print $3}')"
put /etc/passwd "$work/passwd" 644 0 0
put /etc/shadow "$work/shadow" 640 0 "$shadow_gid"
put /etc/group "$work/group" 644 0 0
echo "vagrant ALL=(ALL) NOPASSWD: ALL" > "$work/sudoers"
put /etc/sudoers.d/vagrant "$work/sudoers" 440 0 0
mkd /home/vagrant 755 1001 1001
mkd /home/vagrant/.ssh 700 1001 1001
put /home/vagrant/.ssh/authorized_keys "$insecure" 600 1001 1001
printf '[Match]\nType=ether\n\n[Network]\nDHCP=ipv4\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n' > "$work/dhcp.network"
debugfs -w -R "rm /etc/systemd/network/10-private.network" "$raw" >/dev/null 2>&1
put /etc/systemd/network/99-dhcp.network "$work/dhcp.network" 644 0 0

qemu-img convert -O qcow2 "$raw" "$work/box.img"
rm -f "$raw"
cp "$image/vmlinuz" "$image/initrd.img" "$work/"
size_gb=$(( ($(qemu-img info --output=json "$work/box.img" | sed -nE 's/.*"virtual-size": ([0-9]+).*/\1/p') + 1073741823) / 1073741824 ))
printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %d}\n' "$size_gb" > "$work/metadata.json"
cat > "$work/Vagrantfile" <<'RUBY'
# The image has no boot loader: libvirt boots the box's own kernel and initramfs.
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |lv|
    lv.kernel = File.expand_path("vmlinuz", __dir__)
    lv.initrd = File.expand_path("initrd.img", __dir__)
    lv.cmd_line = "root=/dev/vda rw console=ttyS0"
  end
end
RUBY
tar -C "$work" -cf "$out/netpolicy-debian12.box" metadata.json Vagrantfile box.img vmlinuz initrd.img
echo "$out/netpolicy-debian12.box"
