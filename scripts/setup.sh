#!/usr/bin/env bash
# Installs everything postern's build, demo and tests need on a fresh Debian 12.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
    echo "setup.sh: run as root (network namespaces and firewalls need it)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends \
    build-essential pkg-config ca-certificates \
    iproute2 iptables nftables libpcap-dev libgpgme-dev gnupg sudo \
    fwknop-client fwknop-server python3 \
    firewalld dbus redis-server libseccomp-dev fail2ban systemd
command -v cargo >/dev/null || { echo "setup.sh: a Rust toolchain (cargo) is required" >&2; exit 1; }
