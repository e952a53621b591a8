//! An idle timeout for streamed bodies that costs nothing while data flows.
//!
//! The timer is armed only when the stream has nothing to give (`Pending`), and disarmed by
//! progress, so a body that arrives without pauses never touches tokio's timer wheel. Used for
//! `timeouts.read` (upstream body) and `request_body_timeout` (client body).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Fires after `timeout` of uninterrupted waiting.
pub struct IdleTimer {
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl IdleTimer {
    /// A disarmed timer.
    pub fn new(timeout: Duration) -> IdleTimer {
        IdleTimer {
            timeout,
            sleep: None,
            armed: false,
        }
    }

    /// The configured timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Data arrived: the next wait starts a fresh period.
    pub fn progress(&mut self) {
        self.armed = false;
    }

    /// Call while the source is `Pending`: `Ready` once it has been idle for the timeout.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.armed {
            let deadline = Instant::now() + self.timeout;
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    #[tokio::test(start_paused = true)]
    async fn fires_after_uninterrupted_idleness_only() {
        let mut timer = IdleTimer::new(Duration::from_secs(1));
        let started = Instant::now();
        poll_fn(|cx| timer.poll_expired(cx)).await;
        assert!(started.elapsed() >= Duration::from_secs(1));
        timer.progress();
        let restarted = Instant::now();
        poll_fn(|cx| timer.poll_expired(cx)).await;
        assert!(
            restarted.elapsed() >= Duration::from_secs(1),
            "progress restarts the period"
        );
    }
}
