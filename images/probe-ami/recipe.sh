# shellcheck shell=bash
# The image_* and recipe_* variables are read by scripts/build-image, which also sets
# repo, recipe_dir, hash and HEARTH_IMAGE_CACHE for the recipe.
# shellcheck disable=SC2034,SC2154
# The probe AMI: hearth's probe guest (images/probe, built by scripts/build-probe) as the
# kernel, and a 1 MiB root volume of zeroes on which the probe's blk-counter keeps its
# boot count. Sourced by scripts/build-image.

image_description="hearth probe guest: a tiny no_std kernel that counts its boots on its root volume and powers off on the ACPI power button (images/probe)"
image_command_line="console=ttyS0 probe.ops=timer,blk-counter,wait"
recipe_packages=(binutils)

probe_elf() {
    local built
    built=$("$repo/scripts/build-probe" | tail -n 1) || die "scripts/build-probe failed"
    [[ -f $built ]] || die "scripts/build-probe printed no file: '$built'"
    echo "$built"
}

recipe_inputs() {
    printf 'probe %s\n' "$(sha256sum <"$(probe_elf)" | cut -c1-64)"
}

recipe_build() {
    local stage=$1
    cp "$(probe_elf)" "$stage/hearth-probe"
    truncate -s 1M "$stage/root.img"
    image_kernel=hearth-probe
    image_root=root.img
}
