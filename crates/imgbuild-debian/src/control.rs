//! Debian control-file syntax (deb822 paragraphs) and relationship fields
//! (`Depends`, `Pre-Depends`, `Provides`): the parsing shared by the index, the
//! resolver and the unpacker. Nothing here knows about suites or downloads.

use std::io::BufRead;

use crate::version;

/// One paragraph: fields in file order. Continuation lines are joined with `\n`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Paragraph {
    pub fields: Vec<(String, String)>,
}

impl Paragraph {
    /// The value of a field (names compare case-insensitively, as in deb822).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads deb822 paragraphs from a stream, calling `each` for every paragraph and keeping
/// only the fields `keep` accepts (the Packages index has 20+ fields per package, the
/// resolver needs a handful). Errors name the line number.
pub fn for_each_paragraph<R: BufRead>(
    mut r: R,
    keep: &dyn Fn(&str) -> bool,
    mut each: impl FnMut(Paragraph) -> Result<(), String>,
) -> Result<(), String> {
    let mut cur = Paragraph::default();
    let mut keeping_last = false;
    let mut line = String::new();
    let mut lineno = 0usize;
    let mut any = false;
    loop {
        line.clear();
        let n = r
            .read_line(&mut line)
            .map_err(|e| format!("line {}: {e}", lineno + 1))?;
        lineno += 1;
        let l = line.trim_end_matches(['\n', '\r']);
        if n == 0 || l.trim().is_empty() {
            if any {
                each(std::mem::take(&mut cur))?;
                any = false;
            }
            if n == 0 {
                return Ok(());
            }
            continue;
        }
        if l.starts_with('#') && !any {
            continue;
        }
        if l.starts_with(' ') || l.starts_with('\t') {
            if !any {
                return Err(format!("line {lineno}: continuation line outside a field"));
            }
            if keeping_last && let Some((_, v)) = cur.fields.last_mut() {
                v.push('\n');
                v.push_str(&l[1..]);
            }
            continue;
        }
        let Some((k, v)) = l.split_once(':') else {
            return Err(format!("line {lineno}: expected `Field: value`, got `{l}`"));
        };
        any = true;
        keeping_last = keep(k);
        if keeping_last {
            cur.fields.push((k.to_owned(), v.trim().to_owned()));
        }
    }
}

/// Parses paragraphs held in a string (control files, small fixtures).
pub fn parse_paragraphs(text: &str) -> Result<Vec<Paragraph>, String> {
    let mut out = vec![];
    for_each_paragraph(text.as_bytes(), &|_| true, |p| {
        out.push(p);
        Ok(())
    })?;
    Ok(out)
}

/// A version relation in a dependency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Rel {
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
}

impl Rel {
    pub fn as_str(self) -> &'static str {
        match self {
            Rel::Lt => "<<",
            Rel::Le => "<=",
            Rel::Eq => "=",
            Rel::Ge => ">=",
            Rel::Gt => ">>",
        }
    }
    /// Whether `have` satisfies `have REL want`.
    pub fn holds(self, have: &str, want: &str) -> bool {
        let o = version::compare(have, want);
        match self {
            Rel::Lt => o.is_lt(),
            Rel::Le => o.is_le(),
            Rel::Eq => o.is_eq(),
            Rel::Ge => o.is_ge(),
            Rel::Gt => o.is_gt(),
        }
    }
}

/// `(REL version)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Constraint {
    pub rel: Rel,
    pub version: String,
}

/// One alternative: `name[:arch] [(rel version)]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Atom {
    pub name: String,
    /// `any`, `native`, `amd64`, ... when qualified.
    pub arch: Option<String>,
    pub constraint: Option<Constraint>,
}

impl std::fmt::Display for Atom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name)?;
        if let Some(a) = &self.arch {
            write!(f, ":{a}")?;
        }
        if let Some(c) = &self.constraint {
            write!(f, " ({} {})", c.rel.as_str(), c.version)?;
        }
        Ok(())
    }
}

/// A dependency field: a conjunction of or-groups.
pub type Relations = Vec<Vec<Atom>>;

/// Parses `Depends`-style fields: `a (>= 1) | b, c:any, d [amd64] <!nocheck>`.
/// Architecture lists and build profiles (source-only syntax) are accepted and dropped.
pub fn parse_relations(field: &str) -> Result<Relations, String> {
    let mut out = vec![];
    for group in field.split(',') {
        let group = group.trim();
        if group.is_empty() {
            continue;
        }
        let mut alts = vec![];
        for alt in group.split('|') {
            alts.push(parse_atom(alt.trim()).map_err(|e| format!("`{group}`: {e}"))?);
        }
        out.push(alts);
    }
    Ok(out)
}

fn parse_atom(s: &str) -> Result<Atom, String> {
    // drop `[arch list]` and `<profiles>` (only valid in source packages)
    let mut s = s.to_owned();
    for (open, close) in [('[', ']'), ('<', '>')] {
        while let Some(i) = s.find(open) {
            // `<` inside `(<< 1)` is a relation, not a profile
            if open == '<' && s[..i].contains('(') && !s[..i].contains(')') {
                break;
            }
            let Some(j) = s[i..].find(close) else { break };
            s.replace_range(i..i + j + 1, "");
        }
    }
    let s = s.trim();
    let (head, constraint) = match s.find('(') {
        Some(i) => {
            let inner = s[i + 1..]
                .strip_suffix(')')
                .ok_or_else(|| format!("unbalanced parenthesis in `{s}`"))?
                .trim();
            let (rel, rest) = if let Some(r) = inner.strip_prefix("<<") {
                (Rel::Lt, r)
            } else if let Some(r) = inner.strip_prefix("<=") {
                (Rel::Le, r)
            } else if let Some(r) = inner.strip_prefix(">>") {
                (Rel::Gt, r)
            } else if let Some(r) = inner.strip_prefix(">=") {
                (Rel::Ge, r)
            } else if let Some(r) = inner.strip_prefix('=') {
                (Rel::Eq, r)
            } else if let Some(r) = inner.strip_prefix('<') {
                (Rel::Le, r) // obsolete form, means <=
            } else if let Some(r) = inner.strip_prefix('>') {
                (Rel::Ge, r) // obsolete form, means >=
            } else {
                return Err(format!("unknown version relation in `{s}`"));
            };
            let version = rest.trim().to_owned();
            if version.is_empty() {
                return Err(format!("missing version in `{s}`"));
            }
            (s[..i].trim(), Some(Constraint { rel, version }))
        }
        None => (s, None),
    };
    if head.is_empty() || head.contains(char::is_whitespace) {
        return Err(format!("invalid package name `{head}`"));
    }
    let (name, arch) = match head.split_once(':') {
        Some((n, a)) => (n.to_owned(), Some(a.to_owned())),
        None => (head.to_owned(), None),
    };
    Ok(Atom {
        name,
        arch,
        constraint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relations_parse() {
        let r = parse_relations(
            "libc6 (>= 2.34), awk | mawk:any, libssl3 (<< 3.1~) | libssl1.1 (= 1.1.1n-0+deb11u5), perl:any, foo [amd64] <!nocheck>, bar (>> 1:2.0-1), old (< 2), older (> 1)",
        )
        .unwrap();
        assert_eq!(r.len(), 8);
        assert_eq!(r[0][0].name, "libc6");
        assert_eq!(
            r[0][0].constraint,
            Some(Constraint {
                rel: Rel::Ge,
                version: "2.34".into()
            })
        );
        assert_eq!(r[1].len(), 2);
        assert_eq!(r[1][1].arch.as_deref(), Some("any"));
        assert_eq!(r[2][0].constraint.as_ref().unwrap().rel, Rel::Lt);
        assert_eq!(
            r[2][1].constraint.as_ref().unwrap().version,
            "1.1.1n-0+deb11u5"
        );
        assert_eq!(r[4][0].name, "foo");
        assert_eq!(r[4][0].constraint, None);
        assert_eq!(r[5][0].constraint.as_ref().unwrap().rel, Rel::Gt);
        assert_eq!(r[6][0].constraint.as_ref().unwrap().rel, Rel::Le);
        assert_eq!(r[7][0].constraint.as_ref().unwrap().rel, Rel::Ge);
        assert!(parse_relations("a (>= )").is_err());
        assert!(parse_relations("a (~ 1)").is_err());
        assert!(parse_relations("").unwrap().is_empty());
    }

    #[test]
    fn paragraphs_parse_with_continuations() {
        let p = parse_paragraphs(
            "Package: a\nDescription: short\n long line\n .\n more\n\n\nPackage: b\nDepends: x,\n y\n",
        )
        .unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].get("description"), Some("short\nlong line\n.\nmore"));
        assert_eq!(p[1].get("Depends"), Some("x,\ny"));
        assert_eq!(
            parse_relations(p[1].get("Depends").unwrap()).unwrap().len(),
            2
        );
        assert!(
            parse_paragraphs("no colon here\n")
                .unwrap_err()
                .contains("line 1")
        );
    }

    #[test]
    fn relation_holds() {
        assert!(Rel::Ge.holds("2.36-9+deb12u9", "2.34"));
        assert!(!Rel::Lt.holds("3.1.0", "3.1~"));
        assert!(Rel::Lt.holds("3.0.15-1", "3.1~"));
        assert!(Rel::Eq.holds("1:2.0", "1:2.0-0"));
    }
}
