//! iptables firewall backend for postern (in progress).
