//! Pieces of `postern-bench` (tests/src/bin/postern-bench.rs): raw socket helpers,
//! the per-measurement namespace environment with its server (posternd or
//! fwknopd), and the four measurements. Nothing here asserts on timings.

pub mod env;
pub mod measure;
pub mod net;
pub mod nlcount;
pub mod sys;
