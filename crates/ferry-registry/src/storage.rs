//! Content-addressed storage on disk.
