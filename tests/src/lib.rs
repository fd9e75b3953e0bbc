//! Test harness shared by the settler's tests and the end-to-end tests: real processes on
//! 127.0.0.1 (anvil, Envoy, the settler), each stopped when its handle is dropped.

pub mod anvil;
mod child;
pub mod envoy;
pub mod paths;
pub mod ports;
pub mod settler;
pub mod stack;
pub mod upstream;
