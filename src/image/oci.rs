//! OCI image layouts: resolve, verify, unpack (work in progress).
