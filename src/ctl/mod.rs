//! The control protocol and the `keel ctl` client (work in progress).
