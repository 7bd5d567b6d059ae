//! ipfw firewall backend for postern (in progress).
