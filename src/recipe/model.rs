//! The validated recipe model: what an image is made of, with every value checked
//! and every path resolved. Built once by [`parse`]; never mutated afterwards.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use toml::Spanned;

use super::schema::*;
use super::{RecipeError, SourceFile};

/// Where in a recipe file a value came from (for errors raised after parsing).
#[derive(Clone, Debug)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

#[derive(Clone, Debug)]
pub struct At<T> {
    pub value: T,
    pub pos: Pos,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum From {
    Scratch,
    Recipe(String),
    /// A registry reference, e.g. `docker.io/library/python:3.11-slim@sha256:...`.
    Registry(String),
}

#[derive(Debug)]
pub struct Recipe {
    pub name: String,
    /// Path of the recipe file relative to the project root (for messages).
    pub file: PathBuf,
    pub from: At<From>,
    pub repository: Option<String>,
    pub tags: Vec<String>,
    /// `platforms = [...]`: the project's platforms this image is built for, each with
    /// where it is named (checked against `[build] platforms` by
    /// [`crate::platform::Selection::for_recipe`]); `None`: all of them.
    pub platforms: Option<At<Vec<(crate::platform::Platform, Pos)>>>,
    pub config: ConfigSpec,
    pub layers: Vec<LayerSpec>,
}

impl Recipe {
    /// The recipes this one needs built first: its `from`, and the images its
    /// layers' sources read; each with where it is named.
    pub fn dependencies(&self) -> Vec<(String, Pos)> {
        let mut deps = vec![];
        if let From::Recipe(p) = &self.from.value {
            deps.push((p.clone(), self.from.pos.clone()));
        }
        for l in &self.layers {
            for s in &l.sources {
                deps.extend(s.depends_on());
            }
        }
        deps
    }

    pub fn error_at(&self, pos: &Pos, message: impl Into<String>) -> RecipeError {
        RecipeError {
            file: self.file.clone(),
            line: pos.line,
            column: pos.column,
            message: message.into(),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct ConfigSpec {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub ports: Vec<String>,
    pub volumes: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: Option<String>,
}

/// `user[:group]`, each a name (resolved against the image's own accounts) or a number.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct OwnerSpec {
    pub user: String,
    pub group: Option<String>,
}

/// One image layer: its sources, in build order (see [`crate::source`]).
#[derive(Debug)]
pub struct LayerSpec {
    pub sources: Vec<Box<dyn crate::source::LayerSource>>,
}

impl LayerSpec {
    /// A short description for progress lines and history entries.
    pub fn describe(&self) -> String {
        crate::source::describe(&self.sources)
    }
}

/// What a source's parser needs: the recipe's text (for positions) and the project
/// root (for source paths).
pub struct RecipeCx<'a> {
    src: &'a SourceFile<'a>,
    root: &'a Path,
}

impl RecipeCx<'_> {
    pub fn pos<T>(&self, s: &Spanned<T>) -> Pos {
        let e = self.src.error_at(s.span(), "");
        Pos {
            line: e.line,
            column: e.column,
        }
    }
    pub fn err<T>(&self, s: &Spanned<T>, msg: impl Into<String>) -> RecipeError {
        self.src.error_at(s.span(), msg)
    }

    pub fn mode(&self, s: &Spanned<String>) -> Result<u32, RecipeError> {
        let v = s.get_ref();
        let ok = (3..=4).contains(&v.len()) && v.bytes().all(|b| (b'0'..=b'7').contains(&b));
        match ok.then(|| u32::from_str_radix(v, 8).ok()).flatten() {
            Some(m) => Ok(m),
            None => Err(self.err(
                s,
                format!("invalid mode \"{v}\": write 3 or 4 octal digits, e.g. \"0644\", \"0755\" or \"1777\""),
            )),
        }
    }

    pub fn owner(&self, s: &Spanned<String>) -> Result<OwnerSpec, RecipeError> {
        let v = s.get_ref();
        let (u, g) = match v.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (v.as_str(), None),
        };
        let valid = |x: &str| {
            !x.is_empty()
                && x.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        };
        if !valid(u) || g.is_some_and(|g| !valid(g)) {
            return Err(self.err(
                s,
                format!("invalid owner \"{v}\": write \"user\", \"user:group\" or \"uid:gid\""),
            ));
        }
        Ok(OwnerSpec {
            user: u.to_owned(),
            group: g.map(str::to_owned),
        })
    }

    pub fn image_path(&self, s: &Spanned<String>, what: &str) -> Result<String, RecipeError> {
        let v = s.get_ref();
        if !v.starts_with('/') {
            return Err(self.err(
                s,
                format!("{what} \"{v}\" must be an absolute path in the image (start with `/`)"),
            ));
        }
        if v.split('/').any(|c| c == "..") {
            return Err(self.err(s, format!("{what} \"{v}\" may not contain `..`")));
        }
        if v.trim_end_matches('/').is_empty() {
            return Err(self.err(s, format!("{what} may not be the image root")));
        }
        Ok(v.clone())
    }

    /// A project-relative source path that must exist and stay inside the project.
    pub fn project_path(
        &self,
        s: &Spanned<String>,
        what: &str,
    ) -> Result<(PathBuf, PathBuf), RecipeError> {
        let v = s.get_ref();
        let rel = Path::new(v);
        if rel.is_absolute() {
            return Err(self.err(
                s,
                format!("{what} \"{v}\" must be relative to the project root"),
            ));
        }
        // Lexical check first (clear message), then the real one through symlinks.
        let mut depth: i64 = 0;
        for c in rel.components() {
            match c {
                Component::ParentDir => depth -= 1,
                Component::Normal(_) => depth += 1,
                _ => {}
            }
            if depth < 0 {
                return Err(self.err(
                    s,
                    format!(
                        "{what} \"{v}\" leaves the project directory; sources must be inside it"
                    ),
                ));
            }
        }
        let abs = self.root.join(rel);
        let meta = std::fs::symlink_metadata(&abs);
        if meta.is_err() {
            return Err(self.err(
                s,
                format!(
                    "{what} \"{v}\" does not exist (looked for {})",
                    abs.display()
                ),
            ));
        }
        let canon_root = self
            .root
            .canonicalize()
            .unwrap_or_else(|_| self.root.to_path_buf());
        match abs.canonicalize() {
            Ok(c) if c == canon_root => {
                return Err(self.err(
                    s,
                    format!(
                        "{what} \"{v}\" is the whole project directory (recipes, out/, the lock, ...); name a directory inside it"
                    ),
                ));
            }
            Ok(c) if c.starts_with(&canon_root) => {}
            Ok(c) => {
                return Err(self.err(
                    s,
                    format!(
                        "{what} \"{v}\" resolves to {}, outside the project directory",
                        c.display()
                    ),
                ));
            }
            Err(e) => return Err(self.err(s, format!("{what} \"{v}\" cannot be resolved: {e}"))),
        }
        Ok((rel.to_path_buf(), abs))
    }
}

/// Parses and validates one recipe file.
pub(crate) fn parse(root: &Path, src: &SourceFile) -> Result<Recipe, RecipeError> {
    let raw: RawRecipe = toml::from_str(src.text).map_err(|e| {
        let msg = e.message().trim().to_owned();
        match e.span() {
            Some(span) => src.syntax_error(span, msg),
            None => RecipeError {
                file: src.display.clone(),
                line: 0,
                column: 0,
                message: msg,
            },
        }
    })?;
    let name = src
        .display
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_owned();
    // The name becomes the image name (`imgbuild/NAME` by default): one component
    // of a repository name, by the distribution spec's grammar.
    if !imgbuild_registry::reference::is_path_component(&name) {
        return Err(RecipeError {
            file: src.display.clone(),
            line: 0,
            column: 0,
            message: format!(
                "recipe name \"{name}\" (the file name) is not a valid image name: use lowercase letters and digits, separated by one `.`, one or two `_` or by `-` (not first or last); rename the file"
            ),
        });
    }
    let cx = RecipeCx { src, root };
    let from = match &raw.from {
        None => At {
            value: From::Scratch,
            pos: Pos { line: 0, column: 0 },
        },
        Some(s) => {
            let v = s.get_ref();
            let value = if v == "scratch" {
                From::Scratch
            } else if v.contains('/') || v.contains('@') {
                From::Registry(v.clone())
            } else {
                From::Recipe(v.clone())
            };
            At {
                value,
                pos: cx.pos(s),
            }
        }
    };
    let config = parse_config(&cx, raw.config)?;
    let mut layers = vec![];
    for l in &raw.layers {
        layers.push(parse_layer(&cx, l)?);
    }
    let tags = raw
        .tags
        .unwrap_or_default()
        .into_iter()
        .map(|t| {
            let v = t.get_ref();
            let ok = !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
                && !v.starts_with(['.', '-']);
            if ok {
                Ok(v.clone())
            } else {
                Err(cx.err(
                    &t,
                    format!("invalid tag \"{v}\": use letters, digits, `_`, `.`, `-` (max 128)"),
                ))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let repository = match raw.repository {
        None => None,
        Some(r) => {
            let v = r.get_ref();
            let hint = "write e.g. \"docker.io/ORG/NAME\" or \"registry.example.com:5000/NAME\" (lowercase), without tag or digest (tags go in `tags`)";
            match v.parse::<imgbuild_registry::Reference>() {
                Err(e) => {
                    let reason = match e {
                        imgbuild_registry::RegistryError::InvalidReference { reason, .. } => reason,
                        e => e.to_string(),
                    };
                    return Err(cx.err(&r, format!("invalid repository \"{v}\": {reason}; {hint}")));
                }
                Ok(p) if p.tag.is_some() || p.digest.is_some() => {
                    return Err(cx.err(
                        &r,
                        format!("invalid repository \"{v}\": it has a tag or digest; {hint}"),
                    ));
                }
                Ok(_) => {}
            }
            Some(v.clone())
        }
    };
    let platforms = match &raw.platforms {
        None => None,
        Some(list) => {
            if list.get_ref().is_empty() {
                return Err(cx.err(
                    list,
                    "`platforms` is empty: name at least one platform, or remove it to build for all of the project's",
                ));
            }
            let mut value = vec![];
            for p in list.get_ref() {
                let parsed = crate::platform::Platform::parse(p.get_ref())
                    .map_err(|e| cx.err(p, format!("`platforms`: {e}")))?;
                value.push((parsed, cx.pos(p)));
            }
            Some(At {
                value,
                pos: cx.pos(list),
            })
        }
    };
    Ok(Recipe {
        name,
        file: src.display.clone(),
        from,
        repository,
        tags,
        platforms,
        config,
        layers,
    })
}

fn parse_config(cx: &RecipeCx, c: RawConfig) -> Result<ConfigSpec, RecipeError> {
    let mut ports = vec![];
    for p in c.ports.unwrap_or_default() {
        let v = p.get_ref();
        let (num, proto) = v.split_once('/').unwrap_or((v, "tcp"));
        if num.parse::<u16>().map(|n| n == 0).unwrap_or(true)
            || !["tcp", "udp", "sctp"].contains(&proto)
        {
            return Err(cx.err(
                &p,
                format!("invalid port \"{v}\": write e.g. \"8080/tcp\" or \"53/udp\""),
            ));
        }
        ports.push(format!("{num}/{proto}"));
    }
    // Every string goes into the image config, where a NUL cannot be carried
    // through (the process environment and argv are NUL-terminated C strings;
    // engines refuse or truncate it), so it is refused here with its position.
    let text = |s: &Spanned<String>, what: &str| -> Result<String, RecipeError> {
        match s.get_ref().find('\0') {
            Some(i) => Err(cx.err(
                s,
                format!(
                    "{what} contains a NUL character (at byte {i}), which an image config cannot carry: remove it"
                ),
            )),
            None => Ok(s.get_ref().clone()),
        }
    };
    let list = |v: Option<Vec<Spanned<String>>>, what: &str| {
        v.map(|v| {
            v.iter()
                .map(|s| text(s, what))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()
    };
    let map = |m: Option<BTreeMap<Spanned<String>, Spanned<String>>>, what: &str| {
        let mut out = BTreeMap::new();
        for (k, v) in m.unwrap_or_default() {
            let key = text(&k, &format!("{what} name"))?;
            out.insert(key, text(&v, &format!("{what} `{}`", k.get_ref()))?);
        }
        Ok::<_, RecipeError>(out)
    };
    let env = map(c.env.clone(), "env")?;
    for k in c.env.iter().flat_map(|m| m.keys()) {
        if k.get_ref().is_empty() || k.get_ref().contains('=') {
            return Err(cx.err(
                k,
                format!(
                    "invalid env name \"{}\": it may not be empty or contain `=` (the image stores NAME=VALUE)",
                    k.get_ref()
                ),
            ));
        }
    }
    let opt = |s: Option<Spanned<String>>, what: &str| s.map(|s| text(&s, what)).transpose();
    Ok(ConfigSpec {
        entrypoint: list(c.entrypoint, "entrypoint")?,
        cmd: list(c.cmd, "cmd")?,
        env,
        workdir: opt(c.workdir, "workdir")?,
        user: opt(c.user, "user")?,
        ports,
        volumes: list(c.volumes, "volumes")?.unwrap_or_default(),
        labels: map(c.labels, "label")?,
        stop_signal: opt(c.stop_signal, "stop_signal")?,
    })
}

fn parse_layer(
    cx: &RecipeCx,
    l: &Spanned<crate::source::RawLayer>,
) -> Result<LayerSpec, RecipeError> {
    Ok(LayerSpec {
        sources: crate::source::parse_layer(cx, l.get_ref(), &cx.pos(l))?,
    })
}
