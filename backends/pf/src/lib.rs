//! pf firewall backend for postern (in progress).
