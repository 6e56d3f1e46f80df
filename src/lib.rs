//! keel: a minimal PID 1 that boots a Linux machine straight into containers.

#[cfg(feature = "build")]
pub mod build;
pub mod ctl;
pub mod duration;
pub mod fault;
#[cfg(feature = "build")]
pub mod image;
pub mod init;
#[cfg(feature = "build")]
pub mod kconfig;
pub mod logging;
#[cfg(feature = "build")]
pub mod manifest;
pub mod runtime;
pub mod seccomp;
#[cfg(feature = "build")]
pub mod spec;
pub mod supervisor;
