//! Wall-clock helpers. Timestamps cross process boundaries (jobs, the registry) as Unix
//! milliseconds, which every language and database reads the same way.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// How long from now until `deadline_ms`; zero when it has passed.
pub fn until(deadline_ms: i64) -> Duration {
    let left = deadline_ms.saturating_sub(now_ms());
    Duration::from_millis(u64::try_from(left).unwrap_or(0))
}

/// RFC 3339 text (UTC, millisecond precision) for a Unix-milliseconds timestamp.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_epoch_millis_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn until_a_past_deadline_is_zero() {
        assert_eq!(until(now_ms() - 1000), Duration::ZERO);
        assert!(until(now_ms() + 60_000) > Duration::from_secs(50));
    }
}
