//! Debian version ordering (Debian Policy §5.6.12), written out so the resolver's
//! "newest candidate" and versioned dependencies agree with dpkg and apt.
//!
//! A version is `[epoch:]upstream[-revision]`. Epochs compare numerically; upstream and
//! revision compare by alternating non-digit and digit runs, where in non-digit runs `~`
//! sorts before everything (even the end of the string), letters before non-letters.

use std::cmp::Ordering;

/// Compares two Debian version strings as dpkg does.
pub fn compare(a: &str, b: &str) -> Ordering {
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb)
        .then_with(|| compare_part(ua, ub))
        .then_with(|| compare_part(ra, rb))
}

/// Splits into (epoch, upstream, revision). A missing epoch is 0 and a missing revision
/// is the empty string (which dpkg treats like "0").
fn split(v: &str) -> (u64, &str, &str) {
    let v = v.trim();
    let (epoch, rest) = match v.split_once(':') {
        Some((e, r)) if !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()) => {
            (e.parse::<u64>().unwrap_or(u64::MAX), r)
        }
        _ => (0, v),
    };
    match rest.rfind('-') {
        Some(i) => (epoch, &rest[..i], &rest[i + 1..]),
        None => (epoch, rest, ""),
    }
}

/// The weight of one character in a non-digit run: `~` < end < letters < other.
fn order(c: Option<u8>) -> i32 {
    match c {
        Some(b'~') => -1,
        None => 0,
        Some(c) if c.is_ascii_alphabetic() => c as i32,
        Some(c) => c as i32 + 256,
    }
}

fn compare_part(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        // non-digit run
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let ca = a.get(i).copied().filter(|c| !c.is_ascii_digit());
            let cb = b.get(j).copied().filter(|c| !c.is_ascii_digit());
            let (oa, ob) = (order(ca), order(cb));
            if oa != ob {
                return oa.cmp(&ob);
            }
            if ca.is_some() {
                i += 1;
            }
            if cb.is_some() {
                j += 1;
            }
        }
        // digit run: compare numerically without overflow (strip zeros, then length, then lexically)
        let si = i;
        while i < a.len() && a[i].is_ascii_digit() {
            i += 1;
        }
        let sj = j;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        let na = strip_zeros(&a[si..i]);
        let nb = strip_zeros(&b[sj..j]);
        let ord = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

fn strip_zeros(d: &[u8]) -> &[u8] {
    let n = d.iter().take_while(|&&c| c == b'0').count();
    &d[n..]
}

#[cfg(test)]
mod tests {
    use super::compare;
    use std::cmp::Ordering::*;

    #[test]
    fn policy_examples() {
        // Policy 5.6.12: "~~" < "~~a" < "~" < "" < "a"
        let ordered = ["1.0~~", "1.0~~a", "1.0~", "1.0", "1.0a"];
        for w in ordered.windows(2) {
            assert_eq!(compare(w[0], w[1]), Less, "{} < {}", w[0], w[1]);
            assert_eq!(compare(w[1], w[0]), Greater, "{} > {}", w[1], w[0]);
        }
    }

    #[test]
    fn epochs_revisions_and_numbers() {
        assert_eq!(compare("1:1.0", "2.0"), Greater);
        assert_eq!(compare("0:1.0", "1.0"), Equal);
        assert_eq!(compare("1.0-1", "1.0-2"), Less);
        assert_eq!(compare("1.0", "1.0-0"), Equal);
        assert_eq!(compare("1.10", "1.9"), Greater);
        assert_eq!(compare("1.001", "1.1"), Equal);
        assert_eq!(compare("1.22.1-9+deb12u2", "1.22.1-9"), Greater);
        assert_eq!(compare("1.22.1-9+deb12u1", "1.22.1-9+deb12u2"), Less);
        assert_eq!(compare("2.36-9+deb12u10", "2.36-9+deb12u9"), Greater);
        assert_eq!(compare("1.0+dfsg-1", "1.0-1"), Greater);
        assert_eq!(compare("1.0.0~rc1-1", "1.0.0-1"), Less);
        assert_eq!(compare("7.88.1-10+deb12u5", "7.88.1-10+deb12u12"), Less);
        // huge digit runs do not overflow
        assert_eq!(
            compare("1.99999999999999999999999", "1.100000000000000000000000"),
            Less
        );
        // upstream with hyphens: the revision is after the last one
        assert_eq!(compare("1.0-beta-2", "1.0-beta-10"), Less);
        assert_eq!(compare("a", "+"), Less, "letters sort before non-letters");
    }
}
