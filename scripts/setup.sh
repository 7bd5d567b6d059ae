#!/usr/bin/env bash
# Installs what postern needs on a fresh Debian 12 (as root):
#   setup.sh demo   what scripts/demo.sh needs: a C toolchain, libpcap/gpgme headers,
#                   iproute2, nftables, python3 (the demo's TCP service)
#   setup.sh        (or `all`) that plus what the tests use: the real fwknop 2.6.10
#                   client and server, iptables, ipset, firewalld, dbus, redis, fail2ban,
#                   systemd's journald, sudo, gnupg, libseccomp, logrotate; dpkg-dev and
#                   man-db for the Debian packages, and cargo-deb (built once with cargo)
# Daemons installed here are never started or enabled on this host (a running
# firewalld would change the host's firewall): the tests start their own, inside
# network and mount namespaces they create.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
    echo "setup.sh: run as root (network namespaces and firewalls need it)" >&2
    exit 1
fi
command -v cargo >/dev/null || {
    echo "setup.sh: a Rust toolchain is required first: https://rustup.rs (postern needs Rust 1.89 or newer; Debian 12's cargo is too old)" >&2
    exit 1
}
export DEBIAN_FRONTEND=noninteractive
demo_packages=(build-essential pkg-config ca-certificates iproute2 nftables libpcap-dev libgpgme-dev python3)
test_packages=(iptables ipset gnupg sudo fwknop-client fwknop-server firewalld dbus redis-server
    libseccomp-dev fail2ban systemd groff-base zsh fish openssh-server prometheus curl logrotate
    dpkg-dev man-db)
packages=("${demo_packages[@]}")
[ "${1:-all}" = demo ] || packages+=("${test_packages[@]}")

# Services these packages would start (package:unit): refused while installing
# (policy-rc.d), and disabled again where systemd runs, but only those this
# script installed (a host's own sshd or firewalld is left as it is).
services=(firewalld:firewalld redis-server:redis-server fail2ban:fail2ban openssh-server:ssh
    prometheus:prometheus)
newly_installed=()
for s in "${services[@]}"; do
    dpkg-query -W -f='${Status}' "${s%%:*}" 2>/dev/null | grep -q "install ok installed" ||
        newly_installed+=("${s#*:}")
done
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi

echo "setup.sh: apt-get update; installing ${#packages[@]} packages (a minute or two)"
apt-get update -q
apt-get install -y -q --no-install-recommends "${packages[@]}"
if [ -d /run/systemd/system ]; then
    for s in "${newly_installed[@]}"; do
        systemctl disable --quiet "$s.service" 2>/dev/null || true
    done
fi

# cargo-deb builds the .deb files (scripts/build-deb.sh, tests/tests/debian_package.rs).
cargo_deb_version=3.8.0
if [ "${1:-all}" != demo ]; then
    if cargo-deb --version 2>/dev/null | grep -qx "cargo-deb $cargo_deb_version"; then
        echo "setup.sh: cargo-deb $cargo_deb_version is installed"
    else
        echo "setup.sh: installing cargo-deb $cargo_deb_version (cargo install --locked, ~2 minutes, once)"
        cargo install cargo-deb --version "$cargo_deb_version" --locked
    fi
fi
