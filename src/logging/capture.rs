//! Capture of containers' output (work in progress).
