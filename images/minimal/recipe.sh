# shellcheck shell=bash
# The image_* and recipe_* variables are read by scripts/build-image, which also sets
# repo, recipe_dir, hash and HEARTH_IMAGE_CACHE for the recipe.
# shellcheck disable=SC2034,SC2154
# The minimal AMI: hearth's guest kernel (scripts/build-kernel, ELF vmlinux) and a 32 MiB
# ext4 root of Debian's busybox-static (init, shell, tools, udhcpc, acpid) and
# dropbear-bin (SSH server, with the shared libraries it needs), e2fsprogs' mke2fs, e2fsck
# and resize2fs, plus the files under
# rootfs/ (inittab, rcS, the metadata reader). Sourced by scripts/build-image.

image_description="hearth minimal: Linux 6.1 (hearth guest kernel), busybox init, dropbear SSH on port 22, NoCloud metadata (hostname, SSH keys, password, network), ACPI power button"
image_command_line="console=ttyS0 earlyprintk=serial,ttyS0,115200 reboot=k panic=1 root=/dev/vda rw"
recipe_packages=(busybox-static dropbear-bin e2fsprogs libc-bin python3)
# Size of root.img (sparse); rcS grows the file system to a larger volume at boot.
minimal_root_mib=32
# Binaries taken from the host's Debian packages: path on the host = path in the image.
# mke2fs and e2fsck: a user formats and checks EBS volumes (busybox's mkfs makes ext2 only).
minimal_dynamic=(/usr/sbin/dropbear /usr/bin/dropbearkey /sbin/resize2fs /sbin/mke2fs /sbin/e2fsck)

minimal_kernel() {
    local vmlinux
    vmlinux=$("$repo/scripts/build-kernel" | tail -n 1) || die "scripts/build-kernel failed"
    [[ -f $vmlinux ]] || die "scripts/build-kernel printed no file: '$vmlinux'"
    echo "$vmlinux"
}

# minimal_libs: every shared library (and the dynamic loader) the dynamic binaries load.
minimal_libs() {
    local bin
    for bin in "${minimal_dynamic[@]}"; do
        ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'
    done | sort -u
}

recipe_inputs() {
    local kernel f pkgs
    kernel=$(minimal_kernel)
    printf 'kernel %s\n' "$(basename "$(dirname "$kernel")")"
    # Versions of every Debian package a file of the image comes from (one dpkg -S for
    # all: each file as named, resolved, and without /usr, as merged /usr hides the path
    # dpkg knows).
    local files variants=() owners
    mapfile -t files < <(echo /bin/busybox; printf '%s\n' "${minimal_dynamic[@]}"; minimal_libs)
    for f in "${files[@]}"; do
        variants+=("$f" "$(realpath "$f")" "${f#/usr}")
    done
    owners=$(dpkg -S "${variants[@]}" 2>/dev/null || true)
    for f in "${files[@]}"; do
        grep -qE ": ($f|$(realpath "$f")|${f#/usr})$" <<<"$owners" || die "no Debian package owns $f"
    done
    pkgs=$(cut -d: -f1 <<<"$owners" | sort -u)
    # shellcheck disable=SC2086
    dpkg-query -W -f='${Package} ${Version}\n' $pkgs e2fsprogs
}

recipe_build() {
    local stage=$1 root=$1/rootfs f applet kernel
    kernel=$(minimal_kernel)
    cp "$kernel" "$stage/vmlinux"

    log "assembling the root file system"
    mkdir -p "$root"
    (cd "$root" && mkdir -p bin sbin usr/bin usr/sbin lib64 etc dev proc sys run tmp mnt root var/log var/lib)
    ln -s ../run "$root/var/run"
    ln -s ../proc/self/mounts "$root/etc/mtab"
    chmod 700 "$root/root"
    chmod 1777 "$root/tmp"
    # busybox and one symlink per applet (at the path busybox itself lists)
    cp /bin/busybox "$root/bin/busybox"
    /bin/busybox --list-full | while read -r applet; do
        [[ -e $root/$applet || $applet == bin/busybox ]] || ln -s /bin/busybox "$root/$applet"
    done
    # dropbear, dropbearkey, resize2fs and their libraries, at the same paths as on the host
    # (replacing busybox's applet links of the same name, such as sbin/mke2fs)
    for f in "${minimal_dynamic[@]}" $(minimal_libs); do
        mkdir -p "$root/$(dirname "$f")"
        rm -f "$root/$f"
        cp -L "$f" "$root/$f"
    done
    cp /etc/mke2fs.conf "$root/etc/mke2fs.conf"
    for f in mkfs.ext4 mkfs.ext3; do ln -sf mke2fs "$root/sbin/$f"; done
    ln -sf e2fsck "$root/sbin/fsck.ext4"
    # the recipe's own files (modes set here: git keeps only the executable bit)
    (cd "$recipe_dir/rootfs" && find . -type d) | while read -r f; do mkdir -p "$root/$f"; done
    (cd "$recipe_dir/rootfs" && find . -type f) | while read -r f; do
        if [[ -x $recipe_dir/rootfs/$f ]]; then
            install -m 755 "$recipe_dir/rootfs/$f" "$root/$f"
        else
            install -m 644 "$recipe_dir/rootfs/$f" "$root/$f"
        fi
    done
    chmod 600 "$root/etc/shadow"
    ldconfig -r "$root"
    chown -R 0:0 "$root"
    set_tree_times "$root"
    log "root file system: $(du -sh --apparent-size "$root" | cut -f1) in $(find "$root" | wc -l) entries"

    make_ext4 "$root" "$stage/root.img" "$minimal_root_mib" root
    rm -rf "$root"
    image_kernel=vmlinux
    image_root=root.img
}
