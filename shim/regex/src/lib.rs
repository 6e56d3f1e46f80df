//! `regex` API backed by `regex-lite` (ASCII classes only; enough for the patterns the
//! runtime crates compile).
pub use regex_lite::*;
