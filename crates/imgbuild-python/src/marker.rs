//! PEP 508: environment markers evaluated for a *target* environment (never the build
//! host's), dependency specifiers (`name[extra]>=1; marker`) as found in `Requires-Dist`
//! and requirements files, and PEP 503 name normalisation.
//!
//! Comparison semantics follow `packaging`: when the right-hand side makes a valid PEP 440
//! specifier together with the operator, the comparison is a version comparison (so
//! `python_full_version < "3.11.3"` is true for 3.11.2 and false for 3.11.7); otherwise
//! `==`, `!=`, `in` and `not in` compare strings. `extra` values are compared after PEP 685
//! normalisation.

use std::collections::BTreeMap;
use std::fmt;

use crate::version::{Specifier, SpecifierSet, Version};

/// PEP 503 normalised project name: lowercase, runs of `-`, `_`, `.` become one `-`.
pub fn normalize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for ch in name.trim().chars() {
        if matches!(ch, '-' | '_' | '.') {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.push(ch.to_ascii_lowercase());
        }
    }
    out
}

fn is_valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Error in a marker or dependency specifier; `text` is the whole input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} `{text}`: {why}")]
pub struct MarkerError {
    pub what: &'static str,
    pub text: String,
    pub why: String,
}

/// The values marker variables take for one target interpreter and platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MarkerEnv {
    vars: BTreeMap<&'static str, String>,
}

/// Marker variable names (PEP 508) and the legacy dotted aliases `packaging` still accepts.
const VARIABLES: &[(&str, &str)] = &[
    ("implementation_name", "implementation_name"),
    ("implementation_version", "implementation_version"),
    ("os_name", "os_name"),
    ("os.name", "os_name"),
    ("platform_machine", "platform_machine"),
    ("platform.machine", "platform_machine"),
    (
        "platform_python_implementation",
        "platform_python_implementation",
    ),
    (
        "platform.python_implementation",
        "platform_python_implementation",
    ),
    ("python_implementation", "platform_python_implementation"),
    ("platform_release", "platform_release"),
    ("platform_system", "platform_system"),
    ("platform_version", "platform_version"),
    ("platform.version", "platform_version"),
    ("python_full_version", "python_full_version"),
    ("python_version", "python_version"),
    ("sys_platform", "sys_platform"),
    ("sys.platform", "sys_platform"),
    ("extra", "extra"),
];

impl MarkerEnv {
    /// Builds an environment from `(variable, value)` pairs; missing variables are "".
    pub fn new(pairs: &[(&'static str, String)]) -> MarkerEnv {
        let mut vars = BTreeMap::new();
        for (k, v) in pairs {
            vars.insert(*k, v.clone());
        }
        MarkerEnv { vars }
    }
    pub fn get(&self, var: &str) -> &str {
        self.vars.get(var).map(|s| s.as_str()).unwrap_or("")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Value {
    Var(&'static str),
    Str(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MOp {
    Spec(crate::version::Op),
    In,
    NotIn,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Expr {
    Cmp(Value, MOp, Value),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

/// A parsed marker expression; prints in a normalised form (`python_full_version < "3.11.3"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    expr: Expr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Str(String),
    Ident(String),
    Op(String),
    LParen,
    RParen,
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = vec![];
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'(' {
            out.push(Tok::LParen);
            i += 1;
        } else if c == b')' {
            out.push(Tok::RParen);
            i += 1;
        } else if c == b'"' || c == b'\'' {
            let end = s[i + 1..].find(c as char).ok_or("unterminated string")? + i + 1;
            out.push(Tok::Str(s[i + 1..end].to_owned()));
            i = end + 1;
        } else if b"<>=!~".contains(&c) {
            let mut j = i;
            while j < b.len() && b"<>=!~".contains(&b[j]) {
                j += 1;
            }
            out.push(Tok::Op(s[i..j].to_owned()));
            i = j;
        } else if c.is_ascii_alphanumeric() || c == b'_' {
            let mut j = i;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] == b'.') {
                j += 1;
            }
            out.push(Tok::Ident(s[i..j].to_owned()));
            i = j;
        } else {
            return Err(format!("unexpected character `{}`", c as char));
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    i: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.i)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.i).cloned();
        self.i += 1;
        t
    }
    fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(s)) if s == kw)
    }
    fn or(&mut self) -> Result<Expr, String> {
        let mut e = self.and()?;
        while self.is_kw("or") {
            self.i += 1;
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }
    fn and(&mut self) -> Result<Expr, String> {
        let mut e = self.atom()?;
        while self.is_kw("and") {
            self.i += 1;
            e = Expr::And(Box::new(e), Box::new(self.atom()?));
        }
        Ok(e)
    }
    fn atom(&mut self) -> Result<Expr, String> {
        if self.peek() == Some(&Tok::LParen) {
            self.i += 1;
            let e = self.or()?;
            if self.next() != Some(Tok::RParen) {
                return Err("expected `)`".into());
            }
            return Ok(e);
        }
        let l = self.value()?;
        let op = match self.next() {
            Some(Tok::Op(o)) => {
                let (op, rest) =
                    crate::version::Op::split(&o).ok_or(format!("unknown operator `{o}`"))?;
                if !rest.is_empty() {
                    return Err(format!("unknown operator `{o}`"));
                }
                MOp::Spec(op)
            }
            Some(Tok::Ident(k)) if k == "in" => MOp::In,
            Some(Tok::Ident(k)) if k == "not" => match self.next() {
                Some(Tok::Ident(k)) if k == "in" => MOp::NotIn,
                _ => return Err("expected `in` after `not`".into()),
            },
            other => return Err(format!("expected a comparison operator, found {other:?}")),
        };
        let r = self.value()?;
        if matches!((&l, &r), (Value::Str(_), Value::Str(_))) {
            return Err("a comparison needs at least one marker variable".into());
        }
        Ok(Expr::Cmp(l, op, r))
    }
    fn value(&mut self) -> Result<Value, String> {
        match self.next() {
            Some(Tok::Str(s)) => Ok(Value::Str(s)),
            Some(Tok::Ident(id)) => VARIABLES
                .iter()
                .find(|(n, _)| *n == id)
                .map(|(_, canon)| Value::Var(canon))
                .ok_or(format!("unknown marker variable `{id}`")),
            other => Err(format!(
                "expected a variable or a quoted string, found {other:?}"
            )),
        }
    }
}

impl Marker {
    pub fn parse(text: &str) -> Result<Marker, MarkerError> {
        let err = |why: String| MarkerError {
            what: "environment marker",
            text: text.to_owned(),
            why,
        };
        let toks = tokenize(text).map_err(err)?;
        if toks.is_empty() {
            return Err(err("empty marker".into()));
        }
        let mut p = Parser { toks, i: 0 };
        let expr = p.or().map_err(err)?;
        if p.i != p.toks.len() {
            return Err(err(format!("unexpected {:?}", p.toks[p.i])));
        }
        Ok(Marker { expr })
    }

    /// Evaluates the marker for `env` with `extra` set to the given value ("" when none).
    pub fn evaluate(&self, env: &MarkerEnv, extra: &str) -> bool {
        eval(&self.expr, env, extra)
    }

    /// True if the marker holds with no extra or with any of `extras`.
    pub fn evaluate_any_extra<'a>(
        &self,
        env: &MarkerEnv,
        extras: impl IntoIterator<Item = &'a str>,
    ) -> bool {
        self.evaluate(env, "") || extras.into_iter().any(|e| self.evaluate(env, e))
    }

    /// Whether the marker mentions the `extra` variable at all.
    pub fn uses_extra(&self) -> bool {
        fn walk(e: &Expr) -> bool {
            match e {
                Expr::Cmp(l, _, r) => *l == Value::Var("extra") || *r == Value::Var("extra"),
                Expr::And(a, b) | Expr::Or(a, b) => walk(a) || walk(b),
            }
        }
        walk(&self.expr)
    }
}

fn eval(e: &Expr, env: &MarkerEnv, extra: &str) -> bool {
    match e {
        Expr::And(a, b) => eval(a, env, extra) && eval(b, env, extra),
        Expr::Or(a, b) => eval(a, env, extra) || eval(b, env, extra),
        Expr::Cmp(l, op, r) => {
            let is_extra = *l == Value::Var("extra") || *r == Value::Var("extra");
            let resolve = |v: &Value| -> String {
                let s = match v {
                    Value::Var("extra") => extra.to_owned(),
                    Value::Var(name) => env.get(name).to_owned(),
                    Value::Str(s) => s.clone(),
                };
                if is_extra { normalize_name(&s) } else { s }
            };
            let (lv, rv) = (resolve(l), resolve(r));
            match op {
                MOp::In => rv.contains(&lv),
                MOp::NotIn => !rv.contains(&lv),
                MOp::Spec(o) => {
                    if !is_extra
                        && let Ok(spec) = Specifier::parse(&format!("{}{}", o.as_str(), rv))
                    {
                        // a left side that is not a version never satisfies a version comparison
                        return Version::parse(&lv)
                            .map(|v| spec.contains(&v, &lv))
                            .unwrap_or(false);
                    }
                    use crate::version::Op::*;
                    match o {
                        Eq | Arbitrary => lv == rv,
                        Ne => lv != rv,
                        // string ordering comparisons are undefined in PEP 508; be strict
                        _ => false,
                    }
                }
            }
        }
    }
}

impl fmt::Display for Marker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn val(v: &Value) -> String {
            match v {
                Value::Var(n) => (*n).to_owned(),
                Value::Str(s) if s.contains('"') => format!("'{s}'"),
                Value::Str(s) => format!("\"{s}\""),
            }
        }
        fn go(e: &Expr, f: &mut fmt::Formatter<'_>, parent_and: bool) -> fmt::Result {
            match e {
                Expr::Cmp(l, op, r) => {
                    let op = match op {
                        MOp::Spec(o) => o.as_str(),
                        MOp::In => "in",
                        MOp::NotIn => "not in",
                    };
                    write!(f, "{} {} {}", val(l), op, val(r))
                }
                Expr::And(a, b) => {
                    go(a, f, true)?;
                    f.write_str(" and ")?;
                    go(b, f, true)
                }
                Expr::Or(a, b) => {
                    if parent_and {
                        f.write_str("(")?;
                    }
                    go(a, f, false)?;
                    f.write_str(" or ")?;
                    go(b, f, false)?;
                    if parent_and {
                        f.write_str(")")?;
                    }
                    Ok(())
                }
            }
        }
        go(&self.expr, f, false)
    }
}

/// A PEP 508 dependency specifier without URL: `name[extra,..] specifiers ; marker`.
#[derive(Clone, Debug)]
pub struct DepSpec {
    /// As written.
    pub name: String,
    /// PEP 503 normalised.
    pub key: String,
    /// PEP 685 normalised, sorted.
    pub extras: Vec<String>,
    pub specifiers: SpecifierSet,
    pub marker: Option<Marker>,
}

impl DepSpec {
    pub fn parse(text: &str) -> Result<DepSpec, MarkerError> {
        let err = |why: &str| MarkerError {
            what: "dependency specifier",
            text: text.to_owned(),
            why: why.to_owned(),
        };
        let (req, marker) = match text.find(';') {
            Some(i) => (
                &text[..i],
                Some(Marker::parse(text[i + 1..].trim()).map_err(|e| err(&e.why))?),
            ),
            None => (text, None),
        };
        let req = req.trim();
        let name_end = req
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
            .unwrap_or(req.len());
        let name = &req[..name_end];
        if !is_valid_name(name) {
            return Err(err("missing or invalid project name"));
        }
        let mut rest = req[name_end..].trim_start();
        let mut extras = vec![];
        if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']').ok_or_else(|| err("unterminated `[extras]`"))?;
            for e in r[..end].split(',') {
                let e = e.trim();
                if e.is_empty() {
                    continue;
                }
                if !is_valid_name(e) {
                    return Err(err("invalid extra name"));
                }
                extras.push(normalize_name(e));
            }
            rest = r[end + 1..].trim_start();
        }
        if rest.starts_with('@') {
            return Err(err(
                "direct URL references (`name @ url`) are not supported: pin a version from the index",
            ));
        }
        let rest = rest.trim();
        let rest = match rest.strip_prefix('(') {
            Some(r) => r
                .strip_suffix(')')
                .ok_or_else(|| err("unbalanced parentheses"))?,
            None => rest,
        };
        let specifiers = SpecifierSet::parse(rest).map_err(|e| err(&e.to_string()))?;
        extras.sort();
        extras.dedup();
        Ok(DepSpec {
            name: name.to_owned(),
            key: normalize_name(name),
            extras,
            specifiers,
            marker,
        })
    }
}

impl fmt::Display for DepSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if !self.extras.is_empty() {
            write!(f, "[{}]", self.extras.join(","))?;
        }
        write!(f, "{}", self.specifiers)?;
        if let Some(m) = &self.marker {
            write!(f, " ({m})")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(normalize_name("Async_Timeout"), "async-timeout");
        assert_eq!(normalize_name("zope.interface"), "zope-interface");
        assert_eq!(normalize_name("a__-.b"), "a-b");
    }

    #[test]
    fn dep_spec() {
        let d = DepSpec::parse("async-timeout>=4.0.3; python_full_version < \"3.11.3\"").unwrap();
        assert_eq!(d.key, "async-timeout");
        assert_eq!(
            d.to_string(),
            "async-timeout>=4.0.3 (python_full_version < \"3.11.3\")"
        );
        let d = DepSpec::parse("kombu[Redis] (>=5.3,<6.0) ; extra == 'redis'").unwrap();
        assert_eq!(d.extras, ["redis"]);
        assert_eq!(d.specifiers.to_string(), ">=5.3,<6.0");
        assert!(DepSpec::parse("foo @ https://x/y.whl").is_err());
        assert!(DepSpec::parse(">=1").is_err());
        assert!(DepSpec::parse("foo; python_version <").is_err());
        assert!(DepSpec::parse("foo; bogus_var == '1'").is_err());
    }

    #[test]
    fn marker_printing() {
        let m =
            Marker::parse("(os_name=='nt' or sys_platform == \"win32\") and python_version>='3.8'")
                .unwrap();
        assert_eq!(
            m.to_string(),
            "(os_name == \"nt\" or sys_platform == \"win32\") and python_version >= \"3.8\""
        );
    }
}
