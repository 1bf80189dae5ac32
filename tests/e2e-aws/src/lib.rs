//! ferry-e2e-aws: the end-to-end suite of the AWS backend on moto (see `tests/`). The crate
//! has no library code; it must never be a dependency of anything.
