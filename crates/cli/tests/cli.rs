//! End-to-end tests of the `cairn` binary, run as root: the README tour, every command's
//! `--json` and exit codes, bad input, fidelity of every entry kind, concurrency, damage, and
//! the crash harness.

mod concurrency;
mod crash;
mod damage;
mod errors;
mod mount;
mod mounted;
mod rootless;
mod tour;
mod util;
