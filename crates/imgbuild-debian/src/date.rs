//! Dates of Release files as seconds since the Unix epoch (UTC), and the forms the crate
//! writes them in.
//!
//! A Release file's `Date` and `Valid-Until` are RFC 2822 dates in UTC
//! (`Sat, 28 Nov 2026 02:53:00 UTC`). The lockfile keeps a suite's `Date` as RFC 3339
//! (`2026-11-28T02:53:00Z`: sortable, readable in a diff), and snapshot.debian.org names a
//! moment as `20261128T025300Z`.

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp as i64 + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month, day) of a day number (inverse of [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

fn timestamp(y: i64, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> Result<i64, String> {
    let days_in_month = match mo {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => return Err(format!("month {mo} out of range")),
    };
    if d == 0 || d > days_in_month || h > 23 || mi > 59 || s > 60 {
        return Err("day or time out of range".into());
    }
    Ok(days_from_civil(y, mo, d) * 86_400 + i64::from(h * 3600 + mi * 60 + s))
}

fn hms(t: &str) -> Option<(u32, u32, u32)> {
    let mut it = t.split(':').map(|x| x.parse::<u32>().ok());
    let r = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(r)
}

/// Parses a Release date: `[Day, ]DD Mon YYYY HH:MM:SS ZONE`, the zone `UTC`, `GMT`, `Z`
/// or a numeric offset (`+0000`), as apt accepts them.
pub fn parse_release_date(s: &str) -> Result<i64, String> {
    let bad = |why: &str| format!("`{s}` is not a Release date ({why})");
    let rest = match s.split_once(',') {
        Some((_, r)) => r,
        None => s,
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let [d, mon, y, t, zone] = f[..] else {
        return Err(bad("expected `Sat, 28 Nov 2026 02:53:00 UTC`"));
    };
    let d: u32 = d.parse().map_err(|_| bad("day"))?;
    let mo = MONTHS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(mon))
        .ok_or_else(|| bad("month"))? as u32
        + 1;
    let y: i64 = y.parse().map_err(|_| bad("year"))?;
    let (h, mi, sec) = hms(t).ok_or_else(|| bad("time"))?;
    let offset = match zone {
        "UTC" | "GMT" | "Z" | "UT" => 0,
        z if z.len() == 5 && (z.starts_with('+') || z.starts_with('-')) => {
            let hh: i64 = z[1..3].parse().map_err(|_| bad("zone"))?;
            let mm: i64 = z[3..5].parse().map_err(|_| bad("zone"))?;
            let o = hh * 3600 + mm * 60;
            if z.starts_with('-') { -o } else { o }
        }
        _ => return Err(bad("zone")),
    };
    Ok(timestamp(y, mo, d, h, mi, sec).map_err(|e| bad(&e))? - offset)
}

fn parts(secs: i64) -> (i64, u32, u32, i64, i64, i64) {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    (y, m, d, t / 3600, t / 60 % 60, t % 60)
}

/// `2026-11-28T02:53:00Z`
pub fn to_rfc3339(secs: i64) -> String {
    let (y, m, d, h, mi, s) = parts(secs);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// Parses what [`to_rfc3339`] writes (UTC, `Z`).
pub fn parse_rfc3339(s: &str) -> Result<i64, String> {
    let bad = || format!("`{s}` is not a UTC date like `2026-11-28T02:53:00Z`");
    let body = s.strip_suffix('Z').ok_or_else(bad)?;
    let (date, time) = body.split_once('T').ok_or_else(bad)?;
    let mut it = date.split('-');
    let (Some(y), Some(mo), Some(d), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err(bad());
    };
    let (h, mi, sec) = hms(time).ok_or_else(bad)?;
    timestamp(
        y.parse().map_err(|_| bad())?,
        mo.parse().map_err(|_| bad())?,
        d.parse().map_err(|_| bad())?,
        h,
        mi,
        sec,
    )
    .map_err(|_| bad())
}

/// `20261128T025300Z`, as in `https://snapshot.debian.org/archive/debian/20261128T025300Z`.
pub fn to_snapshot(secs: i64) -> String {
    let (y, m, d, h, mi, s) = parts(secs);
    format!("{y:04}{m:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// Seconds since the epoch now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_dates() {
        // `date -u -d 'Sat, 28 Nov 2026 02:53:00 UTC' +%s`
        let t = parse_release_date("Sat, 28 Nov 2026 02:53:00 UTC").unwrap();
        assert_eq!(t, 1_795_834_380);
        assert_eq!(parse_release_date("28 Nov 2026 02:53:00 GMT").unwrap(), t);
        assert_eq!(
            parse_release_date("Sat, 28 Nov 2026 03:53:00 +0100").unwrap(),
            t
        );
        assert_eq!(to_rfc3339(t), "2026-11-28T02:53:00Z");
        assert_eq!(parse_rfc3339("2026-11-28T02:53:00Z").unwrap(), t);
        assert_eq!(to_snapshot(t), "20261128T025300Z");
        assert_eq!(to_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            to_rfc3339(parse_release_date("Thu, 29 Feb 2024 23:59:59 UTC").unwrap()),
            "2024-02-29T23:59:59Z"
        );
        for bad in [
            "",
            "Sat, 28 Nov 2026",
            "Sat, 31 Nov 2026 00:00:00 UTC",
            "Sat, 28 Nox 2026 00:00:00 UTC",
            "Sat, 28 Nov 2026 24:00:00 UTC",
            "Sat, 28 Nov 2026 00:00:00 CET",
        ] {
            assert!(parse_release_date(bad).is_err(), "{bad}");
        }
        assert!(parse_rfc3339("2026-11-28 02:53:00").is_err());
        assert!(parse_rfc3339("2026-02-30T00:00:00Z").is_err());
    }
}
