//! postern client library.
