//! Reproducible newc cpio archives (work in progress).
