//! The image builder's parts (host side, feature `build`).

pub mod cpio;
pub mod oci;
