#!/bin/sh
# Run by genimage (exec-pre) on the copy of each partition's tree, just before the partition's
# file system is made. $IMAGEMOUNTPATH is that copy.
#
#   setup-partition.sh boot 0xSIGNATURE   kernel command line: root=PARTUUID=<sig>-02
#   setup-partition.sh root 0xSIGNATURE   /etc/fstab: / (read-only unless
#                                         IGconf_guetteur_readonly_root=n) and /boot/firmware
#
# Partitions are named by PARTUUID (MBR disk signature + partition number): the kernel resolves it
# without an initramfs, and it cannot collide with another card's label. The data partition is
# not in fstab: data.mount mounts it by label (GTDATA) and the bind mounts follow from it.
set -eu

kind=${1:?usage: setup-partition.sh boot|root 0xSIGNATURE}
sig=${2:?usage: setup-partition.sh boot|root 0xSIGNATURE}
tree=${IMAGEMOUNTPATH:?IMAGEMOUNTPATH is not set (run by genimage exec-pre)}

case $sig in
	0x[0-9a-fA-F][0-9a-fA-F][0-9a-fA-F][0-9a-fA-F][0-9a-fA-F][0-9a-fA-F][0-9a-fA-F][0-9a-fA-F]) ;;
	*) echo "setup-partition.sh: disk signature '$sig' is not 0x + 8 hex digits" >&2; exit 2 ;;
esac
partuuid=$(printf '%s' "${sig#0x}" | tr 'A-F' 'a-f')

case ${IGconf_guetteur_readonly_root:-y} in
	y|Y|yes|true|1) root_opts=ro,noatime ;;
	*) root_opts=rw,noatime,errors=remount-ro,commit=30 ;;
esac

case $kind in
	boot)
		cmdline=$tree/cmdline.txt
		if [ ! -f "$cmdline" ]; then
			echo "setup-partition.sh: no cmdline.txt on the boot partition (device layer missing?)" >&2
			exit 1
		fi
		line=$(tr '\n' ' ' < "$cmdline" | sed -E 's/(^| )root=[^ ]*//g; s/  +/ /g; s/^ //; s/ $//')
		printf 'root=PARTUUID=%s-02 %s\n' "$partuuid" "$line" > "$cmdline"
		;;
	root)
		mkdir -p "$tree/etc" "$tree/boot/firmware" "$tree/data"
		cat > "$tree/etc/fstab" <<FSTAB
# Written by the image-guetteur layout (image-build/image/guetteur/setup-partition.sh).
# The data partition (label GTDATA) is mounted on /data by data.mount, not here.
PARTUUID=$partuuid-02  /               ext4  $root_opts  0  1
PARTUUID=$partuuid-01  /boot/firmware  vfat  defaults,noatime,fmask=0177,dmask=0077  0  2
FSTAB
		;;
	*)
		echo "setup-partition.sh: unknown partition kind '$kind' (boot or root)" >&2
		exit 2
		;;
esac
