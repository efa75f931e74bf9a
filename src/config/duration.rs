//! Durations as the configuration writes them: a whole number and a unit, `"500ms"`, `"30s"`,
//! `"5m"`, `"1h"`, `"30d"`, or several (`"1h30m"`); `"0"` alone for "off" where a key allows it.
//! One convention for every section, so no key name carries a unit.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The units, largest first: how a duration is printed, and what a number may be followed by.
const UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

const EXPECTED: &str =
    "a duration with a unit, such as \"500ms\", \"30s\", \"5m\", \"1h\" or \"30d\" (\"0\" = off)";

/// A configured duration, whole milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn ms(ms: u64) -> Dur {
        Dur(Duration::from_millis(ms))
    }

    pub const fn secs(secs: u64) -> Dur {
        Dur(Duration::from_secs(secs))
    }

    pub const fn days(days: u64) -> Dur {
        Dur(Duration::from_secs(days * 86_400))
    }

    /// Whole milliseconds (the smallest unit that can be written).
    pub fn millis(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }

    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }

    /// `None` for `"0"` (off), else the duration.
    pub fn nonzero(self) -> Option<Duration> {
        (!self.is_zero()).then_some(self.0)
    }

    /// Whole days, if it is a whole number of days.
    pub fn whole_days(self) -> Option<u64> {
        let day = UNITS[0].1;
        self.millis()
            .is_multiple_of(day)
            .then(|| self.millis() / day)
    }

    /// `n` of `unit` milliseconds (a deprecated key's number); `None` on overflow.
    pub fn from_units(n: u64, unit_ms: u64) -> Option<Dur> {
        n.checked_mul(unit_ms).map(Dur::ms)
    }
}

impl std::str::FromStr for Dur {
    type Err = String;

    fn from_str(s: &str) -> Result<Dur, String> {
        let bad = || format!("{s:?} is not {EXPECTED}");
        let text = s.trim();
        if text == "0" {
            return Ok(Dur::default());
        }
        let mut rest = text;
        let mut total: u64 = 0;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let letters = rest
                .find(|c: char| !c.is_ascii_alphabetic())
                .unwrap_or(rest.len());
            let unit = UNITS
                .iter()
                .find(|(u, _)| *u == &rest[..letters])
                .ok_or_else(bad)?;
            rest = rest[letters..].trim_start();
            total = n
                .checked_mul(unit.1)
                .and_then(|ms| total.checked_add(ms))
                .ok_or_else(|| format!("{s:?} is too long"))?;
        }
        match text.is_empty() {
            true => Err(bad()),
            false => Ok(Dur::ms(total)),
        }
    }
}

impl fmt::Display for Dur {
    /// In the largest unit that states it exactly: `"90s"`, `"2m"`, `"30d"`; `"0"` for zero.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.millis();
        match UNITS.iter().find(|(_, unit)| ms.is_multiple_of(*unit)) {
            _ if ms == 0 => f.write_str("0"),
            Some((name, unit)) => write!(f, "{}{name}", ms / unit),
            None => write!(f, "{ms}ms"),
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Dur, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_prints_the_largest_exact_one() {
        for (text, ms, printed) in [
            ("0", 0, "0"),
            ("500ms", 500, "500ms"),
            ("30s", 30_000, "30s"),
            ("90s", 90_000, "90s"),
            ("120s", 120_000, "2m"),
            ("1h30m", 5_400_000, "90m"),
            ("1h 30m", 5_400_000, "90m"),
            ("1500ms", 1_500, "1500ms"),
            ("30d", 2_592_000_000, "30d"),
            (" 2h ", 7_200_000, "2h"),
        ] {
            let d: Dur = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(d.millis(), ms, "{text}");
            assert_eq!(d.to_string(), printed, "{text}");
            assert_eq!(printed.parse::<Dur>(), Ok(d), "{printed} reads back");
        }
        for bad in [
            "",
            "30",
            "s",
            "30 s x",
            "1.5s",
            "-1s",
            "30sec",
            "1y",
            "30S",
            "99999999999999999d",
        ] {
            assert!(bad.parse::<Dur>().is_err(), "{bad:?} accepted");
        }
        assert_eq!(Dur::days(30).whole_days(), Some(30));
        assert_eq!("36h".parse::<Dur>().map(Dur::whole_days), Ok(None));
    }

    #[test]
    fn a_bare_number_is_refused_with_the_expected_form() {
        #[derive(Deserialize)]
        struct T {
            #[allow(dead_code)]
            d: Dur,
        }
        let e = toml::from_str::<T>("d = 30")
            .err()
            .map(|e| e.message().to_owned());
        assert!(e.as_deref().is_some_and(|e| e.contains("\"30s\"")), "{e:?}");
    }
}
