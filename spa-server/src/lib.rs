//! posternd: capture → HMAC filter → decrypt → replay cache → policy → action.

pub mod capture;
pub mod config;
pub mod pipeline;
pub mod policy;
pub mod replay;
