# shellcheck shell=sh
# hearth-minimal: reading the instance's NoCloud metadata ("cidata" disk). Sourced by
# /etc/init.d/rcS; every function takes the directory holding the disk's files
# (meta-data, user-data, network-config) and only prints, so it runs on any host with
# `busybox sh` too (tests do that). Supported: a subset of YAML (block mappings and
# sequences, flow [a, b] and {k: v}, '...' and "..." scalars, | and > blocks, comments).

# md_flatten FILE: one "path<TAB>value" line per scalar of the YAML file, paths joined by
# dots, sequence items numbered from 0 (e.g. "ethernets.eth0.addresses.0<TAB>10.0.0.5/24").
# A block scalar (| or >) gives one line per text line, all with the same path.
md_flatten() {
    [ -f "$1" ] || return 0
    tr -d '\r' <"$1" | awk -v sq="'" '
    function unquote(s,    c, out, i, ch) {
        sub(/^[ \t]+/, "", s)
        c = substr(s, 1, 1)
        if (c == sq) {
            out = ""
            for (i = 2; i <= length(s); i++) {
                ch = substr(s, i, 1)
                if (ch == sq) {
                    if (substr(s, i + 1, 1) == sq) { out = out ch; i++; continue }
                    break
                }
                out = out ch
            }
            return out
        }
        if (c == "\"") {
            out = ""
            for (i = 2; i <= length(s); i++) {
                ch = substr(s, i, 1)
                if (ch == "\\") {
                    i++; ch = substr(s, i, 1)
                    if (ch == "n") ch = " "
                    else if (ch == "t") ch = "\t"
                    out = out ch
                    continue
                }
                if (ch == "\"") break
                out = out ch
            }
            return out
        }
        sub(/[ \t]+#.*$/, "", s)
        sub(/[ \t]+$/, "", s)
        return s
    }
    function emit(path, value) { printf "%s\t%s\n", path, value }
    function join(prefix, key) { return prefix == "" ? key : prefix "." key }
    # Splits a flow collection body on commas outside quotes into parts[1..n].
    function split_flow(body, parts,    n, i, ch, q, cur) {
        n = 0; q = ""; cur = ""
        for (i = 1; i <= length(body); i++) {
            ch = substr(body, i, 1)
            if (q != "") { if (ch == q) q = ""; cur = cur ch; continue }
            if (ch == sq || ch == "\"") { q = ch; cur = cur ch; continue }
            if (ch == ",") { parts[++n] = cur; cur = ""; continue }
            cur = cur ch
        }
        if (cur ~ /[^ \t]/) parts[++n] = cur
        return n
    }
    # A "key: value" line? Sets KEY and VALUE.
    function is_pair(t,    m) {
        if (t ~ /^"[^"]*":([ \t]|$)/ || t ~ ("^" sq "[^" sq "]*" sq ":([ \t]|$)")) {
            m = index(substr(t, 2), substr(t, 1, 1))
            KEY = substr(t, 2, m - 1); VALUE = substr(t, m + 3)
        } else if (t ~ ("^[^][ \t:#{},\"" sq "-][^:]*:([ \t]|$)") || t ~ /^-[^ \t][^:]*:([ \t]|$)/) {
            m = index(t, ":")
            KEY = substr(t, 1, m - 1); VALUE = substr(t, m + 1)
        } else return 0
        sub(/[ \t]+$/, "", KEY)
        sub(/^[ \t]+/, "", VALUE)
        return 1
    }
    function value(path, v, col,    n, i, parts, body, k) {
        if (v ~ /^#/ ) v = ""
        if (v == "") { opened = path; opened_col = col; return }
        if (v ~ /^[|>][-+0-9]*([ \t]+#.*)?$/) { block = path; block_col = col; block_ind = -1; return }
        if (v ~ /^\[/) {
            body = v; sub(/^\[/, "", body); sub(/\][ \t]*(#.*)?$/, "", body)
            n = split_flow(body, parts)
            for (i = 1; i <= n; i++) emit(path "." (i - 1), unquote(parts[i]))
            return
        }
        if (v ~ /^\{/) {
            body = v; sub(/^\{/, "", body); sub(/\}[ \t]*(#.*)?$/, "", body)
            n = split_flow(body, parts)
            for (i = 1; i <= n; i++) {
                sub(/^[ \t]+/, "", parts[i])
                if (is_pair(parts[i])) emit(join(path, KEY), unquote(VALUE))
            }
            return
        }
        emit(path, unquote(v))
    }
    BEGIN { top = 0; col[0] = 0; pre[0] = ""; seq[0] = -1; opened = ""; block = "" }
    {
        line = $0
        match(line, /^ */); c = RLENGTH; t = substr(line, c + 1)
        if (block != "") {
            if (t == "" || c > block_col) {
                if (block_ind < 0 && t != "") block_ind = c
                emit(block, t == "" ? "" : substr(line, block_ind + 1))
                next
            }
            block = ""
        }
        if (t == "" || t ~ /^#/ || t ~ /^(---|\.\.\.)([ \t]|$)/) next
        if (opened != "") {
            if (c > opened_col || (c == opened_col && t ~ /^-([ \t]|$)/)) {
                top++; col[top] = c; pre[top] = opened; seq[top] = (t ~ /^-([ \t]|$)/); n[top] = 0
            } else emit(opened, "")
            opened = ""
        }
        while (top > 0 && (col[top] > c || (col[top] == c && seq[top] == 1 && t !~ /^-([ \t]|$)/))) top--
        # sequence items, possibly a mapping starting on the dash line ("- name: x")
        while (t ~ /^-([ \t]|$)/) {
            if (seq[top] != 1) {
                if (seq[top] == -1) seq[top] = 1
                else break
                n[top] = 0
            }
            item = pre[top] "." n[top]++
            rest = substr(t, 2); match(rest, /^[ \t]*/); c = c + 1 + RLENGTH; t = substr(rest, RLENGTH + 1)
            if (t == "") { opened = item; opened_col = c - 1; next }
            if (t ~ /^-([ \t]|$)/ || is_pair(t)) {
                top++; col[top] = c; pre[top] = item; seq[top] = (t ~ /^-([ \t]|$)/) ? 1 : 0; n[top] = 0
                continue
            }
            emit(item, unquote(t))
            next
        }
        if (is_pair(t)) {
            if (seq[top] == -1) seq[top] = 0
            value(join(pre[top], KEY), VALUE, c)
        }
    }
    END { if (opened != "") emit(opened, "") }
    '
}

# md_get FILE PATH: the value(s) at PATH (a leading "network." is optional for
# network-config, which may or may not be wrapped in "network:").
md_get() {
    md_flatten "$1" | awk -F '\t' -v p="$2" '$1 == p { sub(/^[^\t]*\t/, ""); print }'
}

# md_userdata_kind DIR: "cloud-config", "script" or "none".
md_userdata_kind() {
    [ -s "$1/user-data" ] || { echo none; return; }
    case "$(head -n 1 "$1/user-data" | tr -d '\r')" in
    "#cloud-config"*) echo cloud-config ;;
    "#!"*) echo script ;;
    *) echo none ;;
    esac
}

# md_instance_id DIR
md_instance_id() {
    md_get "$1/meta-data" instance-id | head -n 1
}

# md_hostname DIR: meta-data local-hostname, else user-data (cloud-config) hostname.
md_hostname() {
    h=$(md_get "$1/meta-data" local-hostname | head -n 1)
    if [ -z "$h" ] && [ "$(md_userdata_kind "$1")" = cloud-config ]; then
        h=$(md_get "$1/user-data" hostname | head -n 1)
    fi
    echo "$h"
}

# md_public_keys DIR: one OpenSSH key per line: meta-data public-keys (a list or one
# value) and user-data's ssh_authorized_keys (top level and users[].ssh_authorized_keys).
md_public_keys() {
    {
        md_flatten "$1/meta-data" | awk -F '\t' '$1 ~ /^public-keys(\.[0-9]+)?$/ { sub(/^[^\t]*\t/, ""); print }'
        if [ "$(md_userdata_kind "$1")" = cloud-config ]; then
            md_flatten "$1/user-data" |
                awk -F '\t' '$1 ~ /^(users\.[0-9]+\.)?ssh_authorized_keys(\.[0-9]+)?$/ { sub(/^[^\t]*\t/, ""); print }'
        fi
    } | awk 'NF && !seen[$0]++'
}

# md_root_password DIR: root's password from a #cloud-config user-data: "password: X"
# (the default user is root here), or a "root:X" entry of chpasswd.list (a | block or a
# list), or chpasswd.users[] with name root. Empty if none.
md_root_password() {
    [ "$(md_userdata_kind "$1")" = cloud-config ] || return 0
    md_flatten "$1/user-data" | awk -F '\t' '
        { v = $0; sub(/^[^\t]*\t/, "", v) }
        $1 == "password" { pw = v }
        $1 ~ /^chpasswd\.list(\.[0-9]+)?$/ && v ~ /^[ \t]*root:/ { sub(/^[ \t]*root:/, "", v); sub(/[ \t]+$/, "", v); listed = v }
        $1 ~ /^chpasswd\.users\.[0-9]+\.name$/ { i = $1; sub(/\.name$/, "", i); name[i] = v }
        $1 ~ /^chpasswd\.users\.[0-9]+\.password$/ { i = $1; sub(/\.password$/, "", i); upw[i] = v }
        END {
            for (i in name) if (name[i] == "root" && (i in upw)) users = upw[i]
            if (users != "") print users; else if (listed != "") print listed; else if (pw != "") print pw
        }'
}

# md_network DIR: the network plan for the first ethernet of network-config (cloud-init
# network config version 2), one directive per line:
#   interface NAME | mac AA:BB:.. | dhcp4 | address A.B.C.D/N | gateway A.B.C.D |
#   route DEST VIA | nameserver A.B.C.D | search DOMAIN | mtu N
# Without network-config (or without ethernets): "interface eth0" and "dhcp4".
md_network() {
    plan=$(md_flatten "$1/network-config" | sed 's/^network\.//' | awk -F '\t' '
        {
            v = $0; sub(/^[^\t]*\t/, "", v)
            if ($1 !~ /^ethernets\./) next
            split($1, p, "."); name = p[2]
            if (first == "") { first = name; print "interface " name }
            if (name != first) next
            key = substr($1, length("ethernets." name ".") + 1)
            if (key == "match.macaddress") print "mac " v
            else if (key == "dhcp4" && v ~ /^(true|yes|on|True|TRUE)$/) print "dhcp4"
            else if (key ~ /^addresses\.[0-9]+$/ && v ~ /^[0-9.]+\/[0-9]+$/) print "address " v
            else if (key == "gateway4") print "gateway " v
            else if (key ~ /^routes\.[0-9]+\.(to|via)$/) {
                i = key; sub(/^routes\./, "", i); sub(/\..*$/, "", i)
                if (key ~ /\.to$/) to[i] = v; else via[i] = v
                if (!(i in order)) { order[i] = ++nroutes; idx[nroutes] = i }
            }
            else if (key ~ /^nameservers\.addresses\.[0-9]+$/) print "nameserver " v
            else if (key ~ /^nameservers\.search\.[0-9]+$/) print "search " v
            else if (key == "mtu") print "mtu " v
        }
        END {
            for (r = 1; r <= nroutes; r++) {
                i = idx[r]
                if (to[i] == "default" || to[i] == "0.0.0.0/0") print "gateway " via[i]
                else if (to[i] != "" && via[i] != "") print "route " to[i] " " via[i]
            }
        }')
    if [ -z "$plan" ]; then
        plan="interface eth0
dhcp4"
    fi
    echo "$plan"
}
