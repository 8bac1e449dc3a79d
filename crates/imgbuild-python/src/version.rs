//! PEP 440 versions and version specifiers (`==`, `!=`, `<`, `<=`, `>`, `>=`, `~=`,
//! `===`, and the `==X.*` / `!=X.*` prefix forms).
//!
//! Used for three things: comparing marker variables such as `python_full_version`,
//! checking that a pinned version satisfies a `Requires-Dist` range, and matching a
//! wheel file's version to a pin. Pinned requirements are explicit, so pre-releases are
//! never excluded by the "no pre-releases unless asked" rule here.

use std::cmp::Ordering;
use std::fmt;

/// A parsed PEP 440 version. Comparison follows the spec; [`Version::to_string`]
/// prints the normalised form.
#[derive(Clone, Debug)]
pub struct Version {
    pub epoch: u64,
    pub release: Vec<u64>,
    /// (`a`|`b`|`rc`, number)
    pub pre: Option<(PreKind, u64)>,
    pub post: Option<u64>,
    pub dev: Option<u64>,
    /// Local segments (`+ubuntu.1`), each numeric or lowercase alphanumeric.
    pub local: Vec<LocalSeg>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PreKind {
    A,
    B,
    Rc,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalSeg {
    Num(u64),
    Str(String),
}

impl Ord for LocalSeg {
    fn cmp(&self, other: &Self) -> Ordering {
        // numeric segments sort after alphanumeric ones (PEP 440)
        match (self, other) {
            (LocalSeg::Num(a), LocalSeg::Num(b)) => a.cmp(b),
            (LocalSeg::Str(a), LocalSeg::Str(b)) => a.cmp(b),
            (LocalSeg::Num(_), LocalSeg::Str(_)) => Ordering::Greater,
            (LocalSeg::Str(_), LocalSeg::Num(_)) => Ordering::Less,
        }
    }
}
impl PartialOrd for LocalSeg {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Error for text that is not a PEP 440 version or specifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a valid PEP 440 {what}")]
pub struct VersionError {
    pub text: String,
    pub what: &'static str,
}

fn verr(text: &str, what: &'static str) -> VersionError {
    VersionError {
        text: text.to_owned(),
        what,
    }
}

/// A tiny cursor over the lowercase version text.
struct Cur<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cur<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn eat_sep(&mut self) -> bool {
        if matches!(self.peek(), Some(b'.' | b'-' | b'_')) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn num(&mut self) -> Option<u64> {
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        if start == self.i {
            return None;
        }
        std::str::from_utf8(&self.s[start..self.i])
            .ok()?
            .parse()
            .ok()
    }
    fn word(&mut self, words: &[&str]) -> Option<usize> {
        // longest match first so that `preview` beats `pre`
        let mut best: Option<(usize, usize)> = None;
        for (k, w) in words.iter().enumerate() {
            if self.s[self.i..].starts_with(w.as_bytes()) && best.is_none_or(|(_, l)| w.len() > l) {
                best = Some((k, w.len()));
            }
        }
        let (k, l) = best?;
        self.i += l;
        Some(k)
    }
}

impl Version {
    pub fn parse(text: &str) -> Result<Version, VersionError> {
        let lower = text.trim().to_ascii_lowercase();
        let mut c = Cur {
            s: lower.as_bytes(),
            i: 0,
        };
        let err = || verr(text, "version");
        if c.peek() == Some(b'v') {
            c.i += 1;
        }
        let mut epoch = 0;
        let mut release = vec![c.num().ok_or_else(err)?];
        if c.peek() == Some(b'!') {
            c.i += 1;
            epoch = release[0];
            release = vec![c.num().ok_or_else(err)?];
        }
        while c.peek() == Some(b'.') && matches!(c.s.get(c.i + 1), Some(b'0'..=b'9')) {
            c.i += 1;
            release.push(c.num().ok_or_else(err)?);
        }
        // pre-release: [sep](a|alpha|b|beta|c|rc|pre|preview)[sep][N]
        let mut pre = None;
        {
            let save = c.i;
            c.eat_sep();
            match c.word(&["a", "alpha", "b", "beta", "c", "rc", "pre", "preview"]) {
                Some(k) => {
                    let kind = match k {
                        0 | 1 => PreKind::A,
                        2 | 3 => PreKind::B,
                        _ => PreKind::Rc,
                    };
                    let save2 = c.i;
                    c.eat_sep();
                    let n = match c.num() {
                        Some(n) => n,
                        None => {
                            c.i = save2;
                            0
                        }
                    };
                    pre = Some((kind, n));
                }
                None => c.i = save,
            }
        }
        // post-release: -N | [sep](post|rev|r)[sep][N]
        let mut post = None;
        {
            let save = c.i;
            if c.peek() == Some(b'-') && matches!(c.s.get(c.i + 1), Some(b'0'..=b'9')) {
                c.i += 1;
                post = c.num();
            } else {
                c.eat_sep();
                if c.word(&["post", "rev", "r"]).is_some() {
                    let save2 = c.i;
                    c.eat_sep();
                    post = Some(c.num().unwrap_or_else(|| {
                        c.i = save2;
                        0
                    }));
                } else {
                    c.i = save;
                }
            }
        }
        // dev-release: [sep]dev[sep][N]
        let mut dev = None;
        {
            let save = c.i;
            c.eat_sep();
            if c.word(&["dev"]).is_some() {
                let save2 = c.i;
                c.eat_sep();
                dev = Some(c.num().unwrap_or_else(|| {
                    c.i = save2;
                    0
                }));
            } else {
                c.i = save;
            }
        }
        let mut local = vec![];
        if c.peek() == Some(b'+') {
            c.i += 1;
            let rest = std::str::from_utf8(&c.s[c.i..]).map_err(|_| err())?;
            for seg in rest.split(['.', '-', '_']) {
                if seg.is_empty() || !seg.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(err());
                }
                local.push(match seg.parse::<u64>() {
                    Ok(n) if seg.bytes().all(|b| b.is_ascii_digit()) => LocalSeg::Num(n),
                    _ => LocalSeg::Str(seg.to_owned()),
                });
            }
            c.i = c.s.len();
        }
        if c.i != c.s.len() {
            return Err(err());
        }
        Ok(Version {
            epoch,
            release,
            pre,
            post,
            dev,
            local,
        })
    }

    pub fn is_prerelease(&self) -> bool {
        self.pre.is_some() || self.dev.is_some()
    }

    /// The same version without its local segment.
    pub fn public(&self) -> Version {
        Version {
            local: vec![],
            ..self.clone()
        }
    }

    /// The release padded with zeros to `n` components (for comparisons).
    fn release_padded(&self, n: usize) -> Vec<u64> {
        let mut r = self.release.clone();
        r.resize(n.max(r.len()), 0);
        r
    }

    /// Sort key of the pre/post/dev part, as in `packaging`'s `_cmpkey`.
    fn suffix_key(&self) -> (i8, PreKind, u64, i8, u64, i8, u64) {
        // pre: a version with only .devN and no pre/post sorts before any pre-release
        let (pre_rank, pre_kind, pre_n) = match (self.pre, self.post, self.dev) {
            (None, None, Some(_)) => (-1, PreKind::A, 0),
            (None, _, _) => (1, PreKind::A, 0),
            (Some((k, n)), _, _) => (0, k, n),
        };
        let (post_rank, post_n) = match self.post {
            None => (-1, 0),
            Some(n) => (0, n),
        };
        let (dev_rank, dev_n) = match self.dev {
            None => (1, 0),
            Some(n) => (0, n),
        };
        (
            pre_rank, pre_kind, pre_n, post_rank, post_n, dev_rank, dev_n,
        )
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Version {}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        let n = self.release.len().max(other.release.len());
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| self.release_padded(n).cmp(&other.release_padded(n)))
            .then_with(|| self.suffix_key().cmp(&other.suffix_key()))
            .then_with(|| match (self.local.is_empty(), other.local.is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Less,
                (false, true) => Ordering::Greater,
                (false, false) => self.local.cmp(&other.local),
            })
    }
}
impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.epoch != 0 {
            write!(f, "{}!", self.epoch)?;
        }
        let rel: Vec<String> = self.release.iter().map(|n| n.to_string()).collect();
        f.write_str(&rel.join("."))?;
        if let Some((k, n)) = self.pre {
            let k = match k {
                PreKind::A => "a",
                PreKind::B => "b",
                PreKind::Rc => "rc",
            };
            write!(f, "{k}{n}")?;
        }
        if let Some(n) = self.post {
            write!(f, ".post{n}")?;
        }
        if let Some(n) = self.dev {
            write!(f, ".dev{n}")?;
        }
        if !self.local.is_empty() {
            let segs: Vec<String> = self
                .local
                .iter()
                .map(|s| match s {
                    LocalSeg::Num(n) => n.to_string(),
                    LocalSeg::Str(s) => s.clone(),
                })
                .collect();
            write!(f, "+{}", segs.join("."))?;
        }
        Ok(())
    }
}

/// A specifier operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Compatible,
    Arbitrary,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Compatible => "~=",
            Op::Arbitrary => "===",
        }
    }
    /// Splits a leading operator off `s`.
    pub fn split(s: &str) -> Option<(Op, &str)> {
        for (p, op) in [
            ("===", Op::Arbitrary),
            ("==", Op::Eq),
            ("!=", Op::Ne),
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("~=", Op::Compatible),
            ("<", Op::Lt),
            (">", Op::Gt),
        ] {
            if let Some(rest) = s.strip_prefix(p) {
                return Some((op, rest));
            }
        }
        None
    }
}

/// One clause such as `>=4.0.3` or `==3.*`.
#[derive(Clone, Debug)]
pub struct Specifier {
    pub op: Op,
    /// The literal as written (trimmed); for `===`, compared as a string.
    pub text: String,
    /// Parsed version (without the `.*` of a prefix match); `None` only for `===`
    /// with a non-PEP 440 literal.
    pub version: Option<Version>,
    /// `==X.*` / `!=X.*`
    pub wildcard: bool,
}

impl Specifier {
    pub fn parse(s: &str) -> Result<Specifier, VersionError> {
        let s = s.trim();
        let (op, rest) = Op::split(s).ok_or_else(|| verr(s, "specifier"))?;
        let text = rest.trim().to_owned();
        if text.is_empty() {
            return Err(verr(s, "specifier"));
        }
        if op == Op::Arbitrary {
            return Ok(Specifier {
                op,
                version: Version::parse(&text).ok(),
                text,
                wildcard: false,
            });
        }
        let (vtext, wildcard) = match text.strip_suffix(".*") {
            Some(v) if matches!(op, Op::Eq | Op::Ne) => (v, true),
            Some(_) => return Err(verr(s, "specifier (`.*` is only allowed with == and !=)")),
            None => (text.as_str(), false),
        };
        let version = Version::parse(vtext).map_err(|_| verr(s, "specifier"))?;
        if op == Op::Compatible && version.release.len() < 2 {
            return Err(verr(
                s,
                "specifier (`~=` needs at least two release components)",
            ));
        }
        if !version.local.is_empty() && !matches!(op, Op::Eq | Op::Ne) {
            return Err(verr(s, "specifier (local versions only with == and !=)"));
        }
        Ok(Specifier {
            op,
            text,
            version: Some(version),
            wildcard,
        })
    }

    /// Whether `v` satisfies this clause. `raw` is the candidate as written, for `===`.
    pub fn contains(&self, v: &Version, raw: &str) -> bool {
        let Some(spec) = &self.version else {
            return raw.trim().eq_ignore_ascii_case(&self.text);
        };
        match self.op {
            Op::Arbitrary => raw.trim().eq_ignore_ascii_case(&self.text),
            Op::Eq | Op::Ne => {
                let eq = if self.wildcard {
                    prefix_match(spec, v)
                } else if spec.local.is_empty() {
                    // `==1.0` matches `1.0+local`
                    v.public() == *spec
                } else {
                    v == spec
                };
                eq == (self.op == Op::Eq)
            }
            Op::Compatible => {
                // ~=X.Y.Z  ==  >=X.Y.Z, ==X.Y.*
                let mut prefix = spec.public();
                prefix.release.pop();
                prefix.pre = None;
                prefix.post = None;
                prefix.dev = None;
                v.public() >= *spec && prefix_match(&prefix, v)
            }
            Op::Le => v.public() <= *spec,
            Op::Ge => v.public() >= *spec,
            Op::Lt => {
                // `<V` excludes pre-releases of V unless V is itself one
                let v = v.public();
                v < *spec
                    && !(!spec.is_prerelease()
                        && v.is_prerelease()
                        && v.epoch == spec.epoch
                        && same_release(&v, spec))
            }
            Op::Gt => {
                // `>V` excludes post-releases of V unless V is one, and local versions of V
                let vp = v.public();
                vp > *spec
                    && !(spec.post.is_none()
                        && vp.post.is_some()
                        && same_release(&vp, spec)
                        && vp.pre == spec.pre)
                    && (v.local.is_empty() || vp != *spec)
            }
        }
    }
}

fn same_release(a: &Version, b: &Version) -> bool {
    let n = a.release.len().max(b.release.len());
    a.release_padded(n) == b.release_padded(n)
}

/// `v` starts with `prefix` (release compared component-wise after zero padding of the
/// prefix only; pre/post/dev of the prefix must match too when present).
fn prefix_match(prefix: &Version, v: &Version) -> bool {
    if prefix.epoch != v.epoch {
        return false;
    }
    let n = prefix.release.len();
    let vr = v.release_padded(n);
    if vr[..n] != prefix.release[..] {
        return false;
    }
    if prefix.pre.is_some() || prefix.post.is_some() || prefix.dev.is_some() {
        return vr.len() == n
            && v.pre == prefix.pre
            && v.post == prefix.post
            && (prefix.dev.is_none() || v.dev == prefix.dev);
    }
    true
}

impl fmt::Display for Specifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.op.as_str(), self.text)
    }
}

/// A comma-separated set of clauses, all of which must hold (empty = any version).
#[derive(Clone, Debug, Default)]
pub struct SpecifierSet(pub Vec<Specifier>);

impl SpecifierSet {
    pub fn parse(s: &str) -> Result<SpecifierSet, VersionError> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(SpecifierSet(vec![]));
        }
        s.split(',')
            .map(Specifier::parse)
            .collect::<Result<_, _>>()
            .map(SpecifierSet)
    }
    pub fn contains(&self, v: &Version, raw: &str) -> bool {
        self.0.iter().all(|s| s.contains(v, raw))
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for SpecifierSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|s| s.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }
    fn sat(spec: &str, ver: &str) -> bool {
        SpecifierSet::parse(spec).unwrap().contains(&v(ver), ver)
    }

    #[test]
    fn parse_and_normalise() {
        assert_eq!(v("1.0").to_string(), "1.0");
        assert_eq!(v("v1.0-1").to_string(), "1.0.post1");
        assert_eq!(v("1.0.alpha2").to_string(), "1.0a2");
        assert_eq!(v("1.0-preview.3").to_string(), "1.0rc3");
        assert_eq!(v("2!1.0.dev4+Ubuntu-1").to_string(), "2!1.0.dev4+ubuntu.1");
        assert_eq!(v("1.1.1.2").release, vec![1, 1, 1, 2]);
        assert!(Version::parse("1.0foo").is_err());
        assert!(Version::parse("").is_err());
    }

    #[test]
    fn ordering() {
        let order = [
            "1.0.dev1",
            "1.0a1.dev1",
            "1.0a1",
            "1.0a2",
            "1.0b1",
            "1.0rc1",
            "1.0",
            "1.0+abc",
            "1.0+1",
            "1.0.post1.dev1",
            "1.0.post1",
            "1.1",
            "1!0.1",
        ];
        for w in order.windows(2) {
            assert!(v(w[0]) < v(w[1]), "{} < {}", w[0], w[1]);
        }
        assert_eq!(v("1.0"), v("1.0.0"));
    }

    #[test]
    fn specifiers() {
        assert!(sat(">=4.0.3", "5.0.1"));
        assert!(!sat("<3.11.3", "3.11.7"));
        assert!(sat("<3.11.3", "3.11.2"));
        assert!(sat("~=3.11", "3.11.2"));
        assert!(sat("~=3.11.0", "3.11.2"));
        assert!(!sat("~=3.11.3", "3.11.2"));
        assert!(!sat("~=3.10.0", "3.11.2"));
        assert!(sat("==3.*", "3.11.2"));
        assert!(sat("==3.11.*", "3.11"));
        assert!(!sat("!=3.11.*", "3.11.2"));
        assert!(sat("===3.11.2", "3.11.2"));
        assert!(!sat("===3.11.2", "3.11.2.0"));
        assert!(sat("==1.0", "1.0+local"));
        assert!(!sat("==1.0+a", "1.0+b"));
        assert!(sat(">=3.7,<4", "3.11.2"));
        assert!(!sat("<2.0", "2.0rc1"));
        assert!(sat("<2.0rc2", "2.0rc1"));
        assert!(!sat(">1.0", "1.0.post1"));
        assert!(sat(">1.0.post0", "1.0.post1"));
        assert!(!sat(">1.0", "1.0+local"));
        assert!(SpecifierSet::parse(">=3.*").is_err());
        assert!(SpecifierSet::parse("~=3").is_err());
    }
}
