# shellcheck shell=bash
# The image_* and recipe_* variables are read by scripts/build-image, which also sets
# repo, recipe_dir, hash and HEARTH_IMAGE_CACHE for the recipe.
# shellcheck disable=SC2034,SC2154
# The debian-12 AMI: Debian 12 (bookworm) from debootstrap --variant=minbase with systemd,
# OpenSSH, cloud-init (NoCloud) and Debian's cloud kernel; kernel and initrd are Debian's
# own (/boot/vmlinuz-*, /boot/initrd.img-*). Packages come from the Debian mirror this
# host's apt uses. Slow: a few minutes and about 1 GiB. Sourced by scripts/build-image.

image_description="Debian 12 (bookworm) minbase: systemd, OpenSSH, cloud-init (NoCloud), Debian's linux-image-cloud-amd64 kernel and initrd"
image_command_line="console=ttyS0 earlyprintk=serial,ttyS0,115200 root=LABEL=root ro reboot=k panic=1 net.ifnames=0"
recipe_packages=(debootstrap debian-archive-keyring e2fsprogs python3)
debian_suite=bookworm
debian_packages=(
    systemd-sysv systemd-resolved udev dbus
    linux-image-cloud-amd64 initramfs-tools zstd e2fsprogs
    openssh-server cloud-init
    iproute2 netbase ca-certificates sudo
)
# Free space in root.img beyond the installed files (the volume can be made larger at
# launch; cloud-init grows the file system to it).
debian_free_mib=512

# debian_mirror SUITE: the first mirror this host's apt sources list for SUITE
# (deb822 .sources files and one-line sources.list), else deb.debian.org.
debian_mirror() {
    local suite=$1 uri
    uri=$(
        {
            cat /etc/apt/sources.list.d/*.sources 2>/dev/null
            echo
        } | awk -v suite="$suite" '
            function flush() { if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") && uris != "" && !done) { split(uris, u, " "); print u[1]; done = 1 } types = suites = uris = "" }
            /^[ \t]*$/ { flush(); next }
            /^Types:/ { sub(/^Types:[ \t]*/, ""); types = $0 }
            /^Suites:/ { sub(/^Suites:[ \t]*/, ""); suites = $0 }
            /^URIs:/ { sub(/^URIs:[ \t]*/, ""); uris = $0 }
            END { flush() }'
    )
    if [[ -z $uri ]]; then
        uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            awk -v suite="$suite" '$1 == "deb" { i = 2; if ($2 ~ /^\[/) while ($i !~ /\]$/) i++; if ($2 ~ /^\[/) i++; if ($(i + 1) == suite) { print $i; exit } }')
    fi
    case "$suite" in
    *-security) echo "${uri:-http://deb.debian.org/debian-security}" ;;
    *) echo "${uri:-http://deb.debian.org/debian}" ;;
    esac
}

recipe_inputs() {
    printf 'mirror %s\nsecurity %s\nsuite %s\n' "$(debian_mirror "$debian_suite")" \
        "$(debian_mirror "$debian_suite-security")" "$debian_suite"
    printf 'package %s\n' "${debian_packages[@]}"
    dpkg-query -W -f='${Package} ${Version}\n' debootstrap debian-archive-keyring e2fsprogs 2>/dev/null || true
}

# debian_umount_all DIR: unmounts everything mounted at or below DIR, deepest first.
debian_umount_all() {
    local dir mnt
    dir=$(realpath -m "$1")
    # never an empty prefix or "/": that would match every mount of the host
    [[ $dir == /?*/?* ]] || return 0
    awk -v d="$dir" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/mounts | sort -r |
        while read -r mnt; do
            umount "$mnt" 2>/dev/null || umount -l "$mnt"
        done
}

# debian_chroot TARGET COMMAND...: runs COMMAND in TARGET without starting services.
debian_chroot() {
    local target=$1
    shift
    LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive chroot "$target" "$@" >&2
}

# debian_check_boot TARGET: the kernel finds hearth-vmm's virtio-mmio devices, and what
# finds the root volume (virtio_mmio, virtio_blk, ext4) is built in or in the initrd.
# Debian's cloud kernel has no VIRTIO_MMIO_CMDLINE_DEVICES: it finds the devices in the
# ACPI DSDT (LNRO0005, which hearth-vmm also writes) and ignores virtio_mmio.device=.
debian_check_boot() {
    local target=$1 version module modules how
    version=$(find "$target/boot" -maxdepth 1 -name 'vmlinuz-*' -printf '%f\n' | sed 's/^vmlinuz-//' | sort -V | tail -n 1)
    modules=$target/lib/modules/$version
    if grep -qx 'CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y' "$target/boot/config-$version"; then
        how="command line (virtio_mmio.device=)"
    elif grep -qx 'CONFIG_ACPI=y' "$target/boot/config-$version" && grep -q 'LNRO0005' "$modules/modules.alias"; then
        how="ACPI (LNRO0005)"
    else
        die "Debian's kernel $version finds virtio-mmio devices neither on the command line nor in ACPI"
    fi
    local initrd_files
    initrd_files=$(chroot "$target" lsinitramfs "/boot/initrd.img-$version")
    for module in virtio_mmio virtio_blk ext4; do
        grep -qE "/$module\.ko" "$modules/modules.builtin" && continue
        grep -qE "/$module\.ko" <<<"$initrd_files" || die "the initrd of $version lacks $module"
    done
    log "kernel $version finds virtio-mmio devices through $how; virtio_mmio, virtio_blk, ext4 at boot"
}

recipe_build() {
    local stage=$1 target=$1/rootfs mirror security vmlinuz initrd used_mib size_mib f
    mirror=$(debian_mirror "$debian_suite")
    security=$(debian_mirror "$debian_suite-security")
    mkdir -p "$target" "$HEARTH_CACHE/debootstrap-debs"
    on_exit "debian_umount_all '$target'"

    # Every path below is inside the staging directory: refuse anything else.
    [[ $target == "$HEARTH_IMAGE_CACHE"/.debian-12-*.tmp.*/rootfs ]] || die "unexpected build root '$target'"

    log "debootstrap $debian_suite (minbase) from $mirror (package cache $HEARTH_CACHE/debootstrap-debs)"
    if ! debootstrap --variant=minbase --arch=amd64 --components=main \
        --cache-dir="$HEARTH_CACHE/debootstrap-debs" "$debian_suite" "$target" "$mirror" >&2; then
        tail -n 40 "$target/debootstrap/debootstrap.log" >&2 || true
        die "debootstrap failed"
    fi

    log "configuring the image"
    # The recipe's files first (modes set here), so that the kernel's first initrd is built
    # with them; dpkg keeps them over the packages' versions (--force-confold).
    (cd "$recipe_dir/files" && find . -type f) | while read -r f; do
        install -D -m 644 "$recipe_dir/files/$f" "$target/$f"
    done
    printf 'deb %s %s main\n' "$mirror" "$debian_suite" "$mirror" "$debian_suite-updates" \
        "$security" "$debian_suite-security" >"$target/etc/apt/sources.list"
    mount -t proc proc "$target/proc"
    mount -t sysfs sysfs "$target/sys"
    mount --bind /dev "$target/dev"
    mount -t devpts -o newinstance devpts "$target/dev/pts"
    # No service starts inside the chroot; DNS from the host while apt runs.
    printf '#!/bin/sh\nexit 101\n' >"$target/usr/sbin/policy-rc.d"
    chmod 755 "$target/usr/sbin/policy-rc.d"
    rm -f "$target/etc/resolv.conf"
    cp -L /etc/resolv.conf "$target/etc/resolv.conf"

    log "installing ${debian_packages[*]} (with point-release and security updates)"
    local apt=(apt-get -y -o Dpkg::Options::=--force-confold -o Dpkg::Options::=--force-confdef)
    debian_chroot "$target" apt-get update
    debian_chroot "$target" "${apt[@]}" dist-upgrade
    debian_chroot "$target" "${apt[@]}" install --no-install-recommends "${debian_packages[@]}"
    debian_chroot "$target" "${apt[@]}" --purge autoremove
    debian_chroot "$target" systemctl enable systemd-networkd systemd-resolved
    debian_chroot "$target" update-initramfs -u -k all
    debian_chroot "$target" apt-get clean
    debian_check_boot "$target"

    # What every instance must make for itself: host keys (cloud-init writes new ones),
    # machine-id, cloud-init's state; and what only the build needed.
    rm -f "$target/etc/resolv.conf" "$target/usr/sbin/policy-rc.d"
    ln -s ../run/systemd/resolve/stub-resolv.conf "$target/etc/resolv.conf"
    rm -f "$target"/etc/ssh/ssh_host_*
    : >"$target/etc/machine-id"
    rm -f "$target/var/lib/dbus/machine-id"
    rm -rf "$target"/var/lib/cloud/* "$target"/var/lib/apt/lists/* "$target"/var/cache/apt/*.bin \
        "$target"/var/log/*.log "$target"/var/log/apt/* "$target"/tmp/* "$target"/var/tmp/*
    dpkg-query --admindir="$target/var/lib/dpkg" -W -f='${Package} ${Version}\n' >"$stage/packages.txt"
    debian_umount_all "$target"

    vmlinuz=$(find "$target/boot" -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -n 1)
    initrd=$(find "$target/boot" -maxdepth 1 -name 'initrd.img-*' | sort -V | tail -n 1)
    [[ -f $vmlinuz && -f $initrd ]] || die "no kernel or initrd in $target/boot"
    log "kernel $(basename "$vmlinuz"), initrd $(basename "$initrd") ($(du -h "$initrd" | cut -f1))"
    cp "$vmlinuz" "$stage/vmlinuz"
    cp "$initrd" "$stage/initrd.img"

    set_tree_times "$target"
    used_mib=$(du -sxm "$target" | cut -f1)
    # ext4 metadata (inode tables, journal) takes about a tenth; round up to 64 MiB.
    size_mib=$(((used_mib * 11 / 10 + debian_free_mib + 63) / 64 * 64))
    log "root file system: $used_mib MiB of files, $size_mib MiB volume"
    make_ext4 "$target" "$stage/root.img" "$size_mib" root
    rm -rf --one-file-system "$target"
    image_kernel=vmlinuz
    image_initrd=initrd.img
    image_root=root.img
}
