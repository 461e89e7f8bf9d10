//! The wall clock, injected so tests can jump it.
//!
//! Token expiry (JWT `exp`) is wall-clock time, and the monotonic clock stops while a laptop
//! sleeps, so every validity decision asks this clock at the moment a token is served.

use std::fmt::Debug;
use std::time::SystemTime;

pub trait Clock: Send + Sync + Debug + 'static {
    fn now(&self) -> SystemTime;
}

/// The real wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}
