//! script firewall backend for postern (in progress).
