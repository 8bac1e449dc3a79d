//! Parsing of fully pinned, hashed requirements files as `pip-compile --generate-hashes`
//! and `uv pip compile --generate-hashes` write them.
//!
//! Only what such files contain is accepted: `name[extras]==version ; marker` with one or
//! more `--hash=sha256:…`, line continuations, comments, and the index options
//! (`-i/--index-url`, `--extra-index-url`). Everything that would make the build depend on
//! something other than the listed hashes (unpinned or unhashed lines, URLs, editables,
//! nested `-r` files, `--find-links`), and `--no-binary` (only wheels are installed), is
//! an error naming the file and line. One kind of URL is accepted:
//! `name @ git+https://host/org/repo.git@<40-hex commit>`, pinned by its commit
//! (built from source by [`crate::sdist::WheelBuilder`]); a branch or tag is an error.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use imgbuild_store::Digest;

use crate::Error;
use crate::marker::{DepSpec, Marker};
use crate::version::{Op, Version};

/// One pinned requirement.
#[derive(Clone, Debug)]
pub struct Requirement {
    /// As written in the file.
    pub name: String,
    /// PEP 503 normalised name.
    pub key: String,
    /// The pinned version as written (after `==`).
    pub version: String,
    /// PEP 685 normalised extras requested on this line, sorted.
    pub extras: Vec<String>,
    pub marker: Option<Marker>,
    /// The allowed file hashes, sorted and deduplicated.
    pub hashes: Vec<Digest>,
    /// 1-based line where the requirement starts.
    pub line: usize,
    /// `name @ git+https://host/repo.git@<commit>`: built from that commit (then
    /// `version` is `0+git.<commit>` and `hashes` is empty: the commit pins it).
    pub git: Option<GitPin>,
}

/// A requirement's git source, pinned to a commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitPin {
    /// The repository URL without `git+` and without the `@<commit>`.
    pub url: String,
    /// 40 lowercase hex digits.
    pub commit: String,
}

/// Parses `git+URL@REV` (the part after `name @ `); the error says what to write.
pub fn parse_git_url(text: &str) -> Result<GitPin, String> {
    // credentials in the URL are sent to the server, never shown
    let shown = crate::error::redact_url(text);
    let rest = text.strip_prefix("git+").ok_or_else(|| {
        format!("`{shown}`: only `git+https://…@<commit>` URLs are supported in requirements")
    })?;
    if !(rest.starts_with("https://") || rest.starts_with("http://")) {
        return Err(format!(
            "`{text}`: the git URL must be https:// (or http://)"
        ));
    }
    let after_scheme = rest.find("://").map(|i| i + 3).unwrap_or(0);
    let (url, rev) = match rest[after_scheme..].rsplit_once('@') {
        Some((u, r)) if !r.contains('/') => (&rest[..after_scheme + u.len()], r),
        _ => {
            return Err(format!(
                "`{shown}` names no commit: append `@<40-hex commit>` (a branch can move)"
            ));
        }
    };
    let rev = rev.split('#').next().unwrap_or(rev);
    if rev.len() != 40 || !rev.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "`@{rev}` is not a commit: a branch or tag can move, so pin the 40-hex commit it points to \
             (git ls-remote {} {rev})",
            crate::error::redact_url(url)
        ));
    }
    Ok(GitPin {
        url: url.to_owned(),
        commit: rev.to_ascii_lowercase(),
    })
}

impl Requirement {
    pub fn parsed_version(&self) -> Version {
        // checked at parse time
        Version::parse(&self.version).expect("pinned version was validated when parsed")
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name)?;
        if !self.extras.is_empty() {
            write!(f, "[{}]", self.extras.join(","))?;
        }
        write!(f, "=={}", self.version)
    }
}

/// A parsed requirements file.
#[derive(Clone, Debug)]
pub struct Requirements {
    pub path: PathBuf,
    pub requirements: Vec<Requirement>,
    /// `-i/--index-url` from the file (the last one wins, as in pip).
    pub index_url: Option<String>,
    pub extra_index_urls: Vec<String>,
}

impl Requirements {
    /// The file name for messages (`requirements.txt`).
    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.path.display().to_string())
    }
}

/// Reads and parses a requirements file.
pub fn parse_requirements(path: &Path) -> Result<Requirements, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        op: "failed to read requirements file",
        path: path.to_path_buf(),
        source,
    })?;
    parse_requirements_str(&text, path)
}

/// Parses requirements text; `path` is only used in messages and the result.
pub fn parse_requirements_str(text: &str, path: &Path) -> Result<Requirements, Error> {
    let err = |line: usize, msg: String| Error::Requirements {
        file: path.to_path_buf(),
        line,
        msg,
    };
    let mut out = Requirements {
        path: path.to_path_buf(),
        requirements: vec![],
        index_url: None,
        extra_index_urls: vec![],
    };
    let mut seen = BTreeSet::new();
    // join continuation lines, remembering where each logical line starts
    let mut logical: Vec<(usize, String)> = vec![];
    let mut cur: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let (start, mut acc) = cur.take().unwrap_or((i + 1, String::new()));
        // pip strips comments before joining: `#` at line start or after whitespace
        let content = strip_comment(raw);
        if let Some(body) = content.strip_suffix('\\') {
            acc.push_str(body);
            acc.push(' ');
            cur = Some((start, acc));
        } else {
            acc.push_str(content);
            logical.push((start, acc));
        }
    }
    if let Some(c) = cur {
        logical.push(c);
    }

    for (line, l) in logical {
        let l = l.trim();
        if l.is_empty() {
            continue;
        }
        let mut words = split_words(l);
        if l.starts_with('-') {
            // a global option line
            let (opt, val) = take_option(&mut words);
            match opt.as_str() {
                "-i" | "--index-url" => {
                    out.index_url =
                        Some(val.ok_or_else(|| err(line, format!("`{opt}` needs a URL")))?)
                }
                "--extra-index-url" => out
                    .extra_index_urls
                    .push(val.ok_or_else(|| err(line, format!("`{opt}` needs a URL")))?),
                "--require-hashes" | "--only-binary" | "--prefer-binary" | "--pre"
                | "--trusted-host" => {}
                // `:none:` resets the list: nothing to build from source
                "--no-binary" if val.as_deref() == Some(":none:") => {}
                "--no-binary" => {
                    return Err(err(
                        line,
                        format!(
                            "`--no-binary {}` asks for a build from source, but only wheels are installed (nothing is compiled at build time): remove the line, and pin versions that ship wheels",
                            val.unwrap_or_default()
                        ),
                    ));
                }
                "-r" | "--requirement" | "-c" | "--constraint" => {
                    return Err(err(
                        line,
                        format!(
                            "nested requirement files (`{opt}`) are not supported: compile one flat file with --generate-hashes"
                        ),
                    ));
                }
                "-e" | "--editable" => {
                    return Err(err(line, "editable requirements cannot go into an image layer: build a wheel and pin it".into()));
                }
                "-f" | "--find-links" | "--no-index" => {
                    return Err(err(
                        line,
                        format!(
                            "`{opt}` is not supported: serve the wheels from an index (PEP 503/691) and set --index-url"
                        ),
                    ));
                }
                _ => return Err(err(line, format!("unknown option `{opt}`"))),
            }
            continue;
        }
        // requirement: the spec is everything before the first ` --` option
        let (spec_text, opts) = split_spec_options(l);
        // `name[extras] @ git+URL@commit ; marker`
        if let Some((name, url)) = spec_text.split_once(" @ ") {
            let (url, marker) = match url.split_once(" ;").or_else(|| url.split_once("; ")) {
                Some((u, m)) => (u.trim(), Some(m.trim())),
                None => (url.trim(), None),
            };
            let pin = parse_git_url(url).map_err(|m| err(line, m))?;
            if !opts.trim().is_empty() {
                return Err(err(
                    line,
                    format!(
                        "a git requirement takes no options (`{}`): the commit pins it",
                        opts.trim()
                    ),
                ));
            }
            let text = match marker {
                Some(m) => format!("{} ; {m}", name.trim()),
                None => name.trim().to_owned(),
            };
            let dep = DepSpec::parse(&text).map_err(|e| err(line, e.to_string()))?;
            if !seen.insert(dep.key.clone()) {
                return Err(err(line, format!("`{}` is listed twice", dep.name)));
            }
            out.requirements.push(Requirement {
                name: dep.name,
                key: dep.key,
                version: format!("0+git.{}", pin.commit),
                extras: dep.extras,
                marker: dep.marker,
                hashes: vec![],
                line,
                git: Some(pin),
            });
            continue;
        }
        let mut hashes = BTreeSet::new();
        let mut opt_words = split_words(opts);
        while !opt_words.is_empty() {
            let (opt, val) = take_option(&mut opt_words);
            match opt.as_str() {
                "--hash" => {
                    let v = val.ok_or_else(|| {
                        err(line, "`--hash` needs a value such as sha256:<hex>".into())
                    })?;
                    let hex = v.strip_prefix("sha256:").ok_or_else(|| {
                        err(line, format!("hash `{v}` is not sha256: regenerate the file with --generate-hashes"))
                    })?;
                    let d = Digest::from_hex(&hex.to_ascii_lowercase())
                        .map_err(|_| err(line, format!("hash `{v}` is not 64 hex digits")))?;
                    hashes.insert(d);
                }
                other => {
                    return Err(err(
                        line,
                        format!("unsupported per-requirement option `{other}`"),
                    ));
                }
            }
        }
        let dep = DepSpec::parse(spec_text).map_err(|e| err(line, e.to_string()))?;
        let pin = match dep.specifiers.0.as_slice() {
            [s] if matches!(s.op, Op::Eq | Op::Arbitrary) && !s.wildcard && s.version.is_some() => {
                s.text.clone()
            }
            _ => {
                return Err(err(
                    line,
                    format!(
                        "`{}` is not pinned: every requirement needs exactly `=={{version}}` (use pip-compile or uv pip compile with --generate-hashes)",
                        spec_text.trim()
                    ),
                ));
            }
        };
        if hashes.is_empty() {
            return Err(err(
                line,
                format!(
                    "`{}` has no --hash=sha256:…: every requirement must be hashed (pip-compile/uv pip compile --generate-hashes)",
                    spec_text.trim()
                ),
            ));
        }
        if !seen.insert(dep.key.clone()) {
            return Err(err(line, format!("`{}` is listed twice", dep.name)));
        }
        out.requirements.push(Requirement {
            name: dep.name,
            key: dep.key,
            version: pin,
            extras: dep.extras,
            marker: dep.marker,
            hashes: hashes.into_iter().collect(),
            line,
            git: None,
        });
    }
    Ok(out)
}

fn strip_comment(line: &str) -> &str {
    let b = line.as_bytes();
    for i in 0..b.len() {
        if b[i] == b'#' && (i == 0 || b[i - 1].is_ascii_whitespace()) {
            return line[..i].trim_end();
        }
    }
    line.trim_end()
}

fn split_words(s: &str) -> std::collections::VecDeque<String> {
    s.split_whitespace().map(|w| w.to_owned()).collect()
}

/// Takes `--opt=value`, `--opt value`, `-i value` or `-ivalue` off the front.
fn take_option(words: &mut std::collections::VecDeque<String>) -> (String, Option<String>) {
    let w = words.pop_front().unwrap_or_default();
    if let Some((o, v)) = w.split_once('=')
        && o.starts_with("--")
    {
        return (o.to_owned(), Some(v.to_owned()));
    }
    // a short option with its value attached, as optparse allows: `-ihttps://…`
    if let Some(short @ ("-i" | "-r" | "-c" | "-e" | "-f")) = w.get(..2)
        && w.len() > 2
        && !w.starts_with("--")
    {
        return (short.to_owned(), Some(w[2..].to_owned()));
    }
    let takes_value = matches!(
        w.as_str(),
        "-i" | "--index-url"
            | "--extra-index-url"
            | "--hash"
            | "-r"
            | "--requirement"
            | "-c"
            | "--constraint"
            | "-e"
            | "--editable"
            | "-f"
            | "--find-links"
            | "--trusted-host"
            | "--only-binary"
            | "--no-binary"
    );
    let val = if takes_value { words.pop_front() } else { None };
    (w, val)
}

/// Splits `name==1 ; marker --hash=…` into the spec and the option part.
fn split_spec_options(l: &str) -> (&str, &str) {
    let b = l.as_bytes();
    let mut quote: Option<u8> = None;
    for i in 0..b.len() {
        match quote {
            Some(q) if b[i] == q => quote = None,
            Some(_) => {}
            None if b[i] == b'\'' || b[i] == b'"' => quote = Some(b[i]),
            None if b[i] == b'-'
                && b.get(i + 1) == Some(&b'-')
                && (i == 0 || b[i - 1].is_ascii_whitespace()) =>
            {
                return (&l[..i], &l[i..]);
            }
            None => {}
        }
    }
    (l, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    const H1: &str = "9362660c4a31150cf18e78cae2ce8aa1e929fc6c6739e69f6dd5dbea9c3edc82";
    const H2: &str = "e6e756b15c89c86818b48a4947a424706238afbf67d457428d3269bc4590db9e";

    #[test]
    fn git_requirements_are_pinned_to_a_commit() {
        let c = "0123456789abcdef0123456789ABCDEF01234567";
        let r = parse_requirements_str(
            &format!(
                "My_Pkg[x] @ git+https://user:tok@host/org/repo.git@{c} ; python_version >= \"3\"\nsix==1.16.0 --hash=sha256:{H1}\n"
            ),
            Path::new("r.txt"),
        )
        .unwrap();
        let g = &r.requirements[0];
        assert_eq!(g.key, "my-pkg");
        assert_eq!(g.extras, vec!["x".to_owned()]);
        assert!(g.marker.is_some() && g.hashes.is_empty());
        assert_eq!(
            g.git,
            Some(GitPin {
                url: "https://user:tok@host/org/repo.git".into(),
                commit: c.to_ascii_lowercase()
            })
        );
        assert_eq!(g.version, format!("0+git.{}", c.to_ascii_lowercase()));
        assert!(r.requirements[1].git.is_none());
        for (bad, says) in [
            ("p @ git+https://host/r.git@main", "`@main` is not a commit"),
            ("p @ git+https://host/r.git", "names no commit"),
            ("p @ https://host/p-1.0.tar.gz", "only `git+https://"),
            (
                "p @ git+ssh://git@host/r.git@0123456789abcdef0123456789abcdef01234567",
                "must be https",
            ),
        ] {
            let e = parse_requirements_str(bad, Path::new("r.txt"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(says) && e.contains("r.txt"), "{bad}: {e}");
        }
        let e = parse_requirements_str(
            "p @ git+https://u:secret@host/r.git@main",
            Path::new("r.txt"),
        )
        .unwrap_err()
        .to_string();
        assert!(!e.contains("secret"), "{e}");
        let e = parse_requirements_str(
            &format!("p @ git+https://host/r.git@{c} --hash=sha256:{H2}"),
            Path::new("r.txt"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("takes no options"), "{e}");
    }

    fn parse(s: &str) -> Result<Requirements, Error> {
        parse_requirements_str(s, Path::new("layers/venv/requirements.txt"))
    }

    #[test]
    fn continuations_extras_markers_and_options() {
        let text = format!(
            "# header comment\n\
             --index-url https://mirror.example/simple\n\
             --extra-index-url=https://extra.example/simple\n\
             \n\
             Celery[Redis,sqs]==5.7.0 \\\n    --hash=sha256:{H1} \\\n    --hash=sha256:{H2}\n    # via -r requirements.in\n\
             pywin32==306 ; sys_platform == \"win32\" \\\n    --hash=sha256:{H1}\n\
             async-timeout==5.0.1 ; python_full_version < \"3.11.3\" --hash=sha256:{}  # trailing comment\n",
            H2.to_uppercase()
        );
        let r = parse(&text).unwrap();
        assert_eq!(
            r.index_url.as_deref(),
            Some("https://mirror.example/simple")
        );
        assert_eq!(r.extra_index_urls, ["https://extra.example/simple"]);
        assert_eq!(r.requirements.len(), 3);
        let c = &r.requirements[0];
        assert_eq!(
            (c.key.as_str(), c.version.as_str(), c.line),
            ("celery", "5.7.0", 5)
        );
        assert_eq!(c.extras, ["redis", "sqs"]);
        assert_eq!(c.hashes.len(), 2);
        assert_eq!(c.to_string(), "Celery[redis,sqs]==5.7.0");
        let w = &r.requirements[1];
        assert_eq!(w.line, 9);
        assert_eq!(
            w.marker.as_ref().unwrap().to_string(),
            "sys_platform == \"win32\""
        );
        let a = &r.requirements[2];
        assert_eq!(a.line, 11);
        assert_eq!(a.hashes[0].hex(), H2);
    }

    #[test]
    fn missing_hash_or_pin_names_file_and_line() {
        let text = format!("six==1.16.0 --hash=sha256:{H1}\n# c\nredis==5.0.1\n");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("layers/venv/requirements.txt:3"), "{e}");
        assert!(e.contains("redis==5.0.1") && e.contains("--hash"), "{e}");

        let text =
            format!("six==1.16.0 \\\n  --hash=sha256:{H1}\nredis>=5 \\\n  --hash=sha256:{H1}\n");
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.contains("requirements.txt:3") && e.contains("not pinned"),
            "{e}"
        );

        let e = parse("--no-binary :all:\n").unwrap_err().to_string();
        assert!(
            e.contains("requirements.txt:1")
                && e.contains("--no-binary :all:")
                && e.contains("only wheels"),
            "{e}"
        );
        assert!(parse("--no-binary=psycopg\n").is_err());
        assert!(parse("--no-binary :none:\n").is_ok());
        let r = parse("-ihttps://attached.example/simple\n").unwrap();
        assert_eq!(
            r.index_url.as_deref(),
            Some("https://attached.example/simple")
        );
        let e = parse("-rother.txt\n").unwrap_err().to_string();
        assert!(e.contains("nested"), "{e}");

        for bad in [
            "six==1.*  --hash=sha256:00",
            "six --hash=sha256:ab",
            "-r other.txt",
            "-e ./pkg",
            "six==1 --hash=md5:abc",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let dup = format!("six==1 --hash=sha256:{H1}\nSix==1 --hash=sha256:{H1}\n");
        assert!(parse(&dup).unwrap_err().to_string().contains(":2"));
    }
}
