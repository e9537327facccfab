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
