//! The per-connection command rate (`--rate-limit`, `--rate-burst`): a
//! token bucket with a strike rule, the same for every client transport.

use std::time::Duration;

use tokio::time::Instant;

/// Signals (`typing`) a connection may send per second, on top of the
/// command rate: each one goes to every member of a room.
pub const SIGNAL_RATE: u32 = 10;

pub enum Verdict {
    /// Go ahead.
    Allow,
    /// Over the rate: drop this command with `rate_limited`.
    Reject,
    /// Far over the rate for a second: end the session.
    Close,
}

/// Token bucket with a strike rule: commands over the rate are rejected, and
/// more than `rate` rejections within one second close the connection.
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    strikes: u32,
    strike_window: Instant,
}

impl TokenBucket {
    pub fn new(rate: u32, burst: u32) -> TokenBucket {
        let now = Instant::now();
        let burst = f64::from(burst.max(rate).max(1));
        TokenBucket {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            last: now,
            strikes: 0,
            strike_window: now,
        }
    }

    pub fn take(&mut self, now: Instant) -> Verdict {
        if self.rate == 0.0 {
            return Verdict::Allow;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        if now.saturating_duration_since(self.strike_window) > Duration::from_secs(1) {
            self.strike_window = now;
            self.strikes = 0;
        }
        self.strikes += 1;
        if f64::from(self.strikes) > self.rate {
            Verdict::Close
        } else {
            Verdict::Reject
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_rejects_then_closes() {
        let mut b = TokenBucket::new(10, 20);
        let t = Instant::now();
        let mut allowed = 0;
        let mut rejected = 0;
        loop {
            match b.take(t) {
                Verdict::Allow => allowed += 1,
                Verdict::Reject => rejected += 1,
                Verdict::Close => break,
            }
        }
        assert_eq!(allowed, 20);
        assert_eq!(rejected, 10);
    }

    #[test]
    fn bucket_refills_over_time() {
        let mut b = TokenBucket::new(10, 10);
        let t = Instant::now();
        for _ in 0..10 {
            assert!(matches!(b.take(t), Verdict::Allow));
        }
        assert!(matches!(b.take(t), Verdict::Reject));
        assert!(matches!(
            b.take(t + Duration::from_millis(150)),
            Verdict::Allow
        ));
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let mut b = TokenBucket::new(0, 0);
        let t = Instant::now();
        for _ in 0..10_000 {
            assert!(matches!(b.take(t), Verdict::Allow));
        }
    }
}
