//! Free TCP ports on 127.0.0.1 for the processes a test starts.

use std::net::TcpListener;

/// Asks the kernel for a free port. The listener is closed before returning, so a small race
/// exists; callers retry start-up when a bind fails.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}
