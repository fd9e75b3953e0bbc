//! Flow tests: see below.
