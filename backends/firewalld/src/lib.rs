//! firewalld firewall backend for postern (in progress).
