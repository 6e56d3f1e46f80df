//! keel: a minimal PID 1 that boots a Linux machine straight into containers.

pub mod ctl;
pub mod duration;
pub mod init;
pub mod logging;
pub mod runtime;
pub mod supervisor;
