//! Waiting for a child process to come up: the one polling loop the harness's processes share.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// How a start-up wait ended.
pub(crate) enum Started {
    Ready,
    Exited(ExitStatus),
    TimedOut,
}

/// Polls every 50 ms until `ready()` holds, the child exits, or `timeout` has passed (checked in
/// that order each round). Does not kill the child.
pub(crate) fn wait_started(
    child: &mut Child,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> std::io::Result<Started> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Started::Exited(status));
        }
        if ready() {
            return Ok(Started::Ready);
        }
        if Instant::now() > deadline {
            return Ok(Started::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
