# shellcheck shell=bash
# Shared helpers for hearth's scripts. Source it: . "$(dirname "$0")/lib.sh"

# Root of hearth's build cache (kernel, images, ...).
HEARTH_CACHE=${HEARTH_CACHE:-$HOME/.cache/hearth}

# hearth_apt_install PKG...: install the Debian packages that are missing.
# Idempotent: does nothing (and no `apt-get update`) when all are installed.
hearth_apt_install() {
    local pkg missing=()
    for pkg in "$@"; do
        if [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null) != "install ok installed" ]]; then
            missing+=("$pkg")
        fi
    done
    ((${#missing[@]} == 0)) && return 0
    echo "hearth: installing ${missing[*]}" >&2
    local sudo=()
    ((EUID == 0)) || sudo=(sudo)
    "${sudo[@]}" apt-get update >&2
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2
}

# hearth_moto_server: prints the path of moto_server (an S3-compatible server from PyPI,
# for the image and snapshot stores' S3 tests), installing it into a venv under
# $HEARTH_CACHE/venv when missing. Idempotent.
hearth_moto_server() {
    local venv=$HEARTH_CACHE/venv
    if [[ ! -e $venv/.hearth-complete || ! -x $venv/bin/moto_server ]]; then
        hearth_apt_install python3-venv python3-pip
        echo "hearth: installing moto[server] into $venv" >&2
        rm -rf "$venv"
        /usr/bin/python3 -m venv "$venv" >&2
        "$venv/bin/pip" install --quiet 'moto[server]' >&2
        touch "$venv/.hearth-complete"
    fi
    echo "$venv/bin/moto_server"
}

# hearth_import FILE_OR_IMAGE_DIR IMPORT_DIR [NAME]: puts a file, or an image directory (its
# image.json and files), into hearthd's image import directory (hard links, or copies across
# file systems) and prints the path there. hearthd's RegisterImage reads files only below its
# import directory (--image-import-dir, default <data-dir>/import), never through a symlink.
hearth_import() {
    local source=$1 import=$2 name=${3:-$(basename "$1")}
    mkdir -p "$import"
    rm -rf "${import:?}/$name"
    if [[ -d $source ]]; then
        mkdir -p "$import/$name"
        cp -l "$source"/* "$import/$name/" 2>/dev/null || cp --sparse=always "$source"/* "$import/$name/"
    else
        ln "$source" "$import/$name" 2>/dev/null || cp --sparse=always "$source" "$import/$name"
    fi
    echo "$import/$name"
}
