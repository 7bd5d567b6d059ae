//! nftables firewall backend for postern (in progress).
