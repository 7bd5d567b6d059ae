//! posternd: capture → HMAC filter → decrypt → replay cache → policy → action.

pub mod config;
