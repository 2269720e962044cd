//! Go's `time.Duration` text form (`"30s"`, `"1m0s"`, `"24h0m0s"`, `"100ms"`), as
//! `KubeProxyConfiguration` writes durations.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Serialize, Serializer};

/// A duration read and written the way Go's `time.ParseDuration` / `Duration.String` do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoDuration(pub Duration);

/// A duration that is not valid Go duration text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?} (expected e.g. \"30s\", \"1m30s\", \"100ms\", \"24h0m0s\")")]
pub struct InvalidDuration(pub String);

impl GoDuration {
    /// Parses Go duration text: a sequence of decimal numbers (with optional fraction) each with a
    /// unit among `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`; `"0"` alone is zero. Negative durations are
    /// refused: no kube-proxy setting accepts one.
    pub fn parse(text: &str) -> Result<Self, InvalidDuration> {
        let bad = || InvalidDuration(text.to_owned());
        let s = text.trim();
        if s == "0" {
            return Ok(Self(Duration::ZERO));
        }
        if s.is_empty() || s.starts_with('-') {
            return Err(bad());
        }
        let s = s.strip_prefix('+').unwrap_or(s);
        let mut rest = s;
        let mut total_nanos: u128 = 0;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(bad)?;
            if num_len == 0 {
                return Err(bad());
            }
            let (num, after) = rest.split_at(num_len);
            let unit_len = after
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(after.len());
            let (unit, after) = after.split_at(unit_len);
            let nanos_per_unit: u128 = match unit {
                "ns" => 1,
                "us" | "µs" | "μs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                _ => return Err(bad()),
            };
            let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
            if (whole.is_empty() && frac.is_empty()) || frac.contains('.') {
                return Err(bad());
            }
            let whole: u128 = if whole.is_empty() {
                0
            } else {
                whole.parse().map_err(|_| bad())?
            };
            let mut nanos = whole.checked_mul(nanos_per_unit).ok_or_else(bad)?;
            let mut scale = nanos_per_unit;
            for d in frac.bytes() {
                scale /= 10;
                nanos += u128::from(d - b'0') * scale;
            }
            total_nanos = total_nanos.checked_add(nanos).ok_or_else(bad)?;
            rest = after;
        }
        let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| bad())?;
        Ok(Self(Duration::new(
            secs,
            (total_nanos % 1_000_000_000) as u32,
        )))
    }
}

impl fmt::Display for GoDuration {
    /// Go's `Duration.String`: `0s`, `100ms`, `1.5s`, `1m0s`, `24h0m0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.is_zero() {
            return f.write_str("0s");
        }
        if d < Duration::from_secs(1) {
            let nanos = d.as_nanos();
            return if nanos < 1_000 {
                write!(f, "{nanos}ns")
            } else if nanos < 1_000_000 {
                write!(f, "{}µs", trim(nanos as f64 / 1e3))
            } else {
                write!(f, "{}ms", trim(nanos as f64 / 1e6))
            };
        }
        let total = d.as_secs();
        let (h, m) = (total / 3600, (total % 3600) / 60);
        let secs = (total % 60) as f64 + f64::from(d.subsec_nanos()) / 1e9;
        if h > 0 {
            write!(f, "{h}h{m}m{}s", trim(secs))
        } else if m > 0 {
            write!(f, "{m}m{}s", trim(secs))
        } else {
            write!(f, "{}s", trim(secs))
        }
    }
}

/// A number without trailing zeros (`1.500` → `1.5`, `2.0` → `2`).
fn trim(v: f64) -> String {
    let s = format!("{v:.9}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_owned()
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = GoDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"30s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<GoDuration, E> {
                GoDuration::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<GoDuration, E> {
                if v == 0 {
                    Ok(GoDuration(Duration::ZERO))
                } else {
                    Err(E::custom(format!(
                        "invalid duration {v}: a number needs a unit, e.g. \"{v}s\""
                    )))
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        let p = |s| GoDuration::parse(s).map(|d| d.0);
        assert_eq!(p("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(p("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(p("24h0m0s"), Ok(Duration::from_secs(86_400)));
        assert_eq!(p("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(p("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(p("2h22m"), Ok(Duration::from_secs(2 * 3600 + 22 * 60)));
        assert_eq!(p("0"), Ok(Duration::ZERO));
        assert_eq!(p("0s"), Ok(Duration::ZERO));
        for bad in ["", "30", "-1s", "1x", "s", "1.2.3s", "1h-5m"] {
            assert!(p(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn prints_like_go() {
        let s = |d: Duration| GoDuration(d).to_string();
        assert_eq!(s(Duration::ZERO), "0s");
        assert_eq!(s(Duration::from_secs(30)), "30s");
        assert_eq!(s(Duration::from_secs(60)), "1m0s");
        assert_eq!(s(Duration::from_secs(900)), "15m0s");
        assert_eq!(s(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(s(Duration::from_secs(86_400)), "24h0m0s");
        assert_eq!(s(Duration::from_millis(100)), "100ms");
        assert_eq!(s(Duration::from_millis(1500)), "1.5s");
    }
}
