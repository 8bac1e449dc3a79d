//! Recipes: loading `recipes/*.toml`, validating them into an immutable model, and
//! ordering them by their `from` dependencies.
//!
//! Parse, then resolve: [`schema`] is the raw serde view (unknown keys are errors),
//! [`model`] the validated one. Every error names the recipe file, line and column,
//! and validation of all recipes happens before anything is built, so a bad recipe
//! never leaves a half-done build behind.

pub mod model;
pub mod schema;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

pub use model::*;

/// An error in a recipe, with its position.
#[derive(Debug)]
pub struct RecipeError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for RecipeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )
        } else {
            write!(f, "{}: {}", self.file.display(), self.message)
        }
    }
}
impl std::error::Error for RecipeError {}

/// Source text of one recipe, for turning byte spans into line/column.
pub(crate) struct SourceFile<'a> {
    pub display: PathBuf,
    pub text: &'a str,
}

impl SourceFile<'_> {
    /// A TOML parse error, at [`syntax_error_offset`].
    pub fn syntax_error(&self, span: std::ops::Range<usize>, message: String) -> RecipeError {
        let at = syntax_error_offset(self.text, span.start, &message);
        self.error_at(at..at, message)
    }

    pub fn error_at(
        &self,
        span: std::ops::Range<usize>,
        message: impl Into<String>,
    ) -> RecipeError {
        let upto = &self.text[..span.start.min(self.text.len())];
        let line = upto.matches('\n').count() + 1;
        let column = upto.len() - upto.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
        RecipeError {
            file: self.display.clone(),
            line,
            column,
            message: message.into(),
        }
    }
}

/// Where a TOML syntax error really is. The parser reports where it noticed the
/// error: for a missing `]`, `}` or `,` that is the next token, often on a later
/// line (`cmd = ["a"` followed by `env = ...` is "missing comma" at `env`), or
/// the end of the file. When such an error ("missing ...", "unclosed ...") starts
/// a line, or is at the end of the file, it is reported at the end of the
/// previous line with content (blank and comment-only lines skipped), where the
/// `]` or `,` belongs. Other errors (an unknown key at the start of its line)
/// stay where they are.
pub(crate) fn syntax_error_offset(text: &str, offset: usize, message: &str) -> usize {
    let start = offset.min(text.len());
    let line_start = text[..start].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let starts_line = text[line_start..start].trim().is_empty();
    let unfinished = message.starts_with("missing ") || message.starts_with("unclosed ");
    if !starts_line || !unfinished {
        return start;
    }
    // Walk back over the lines before this one.
    let mut end = line_start;
    while end > 0 {
        let prev_start = text[..end - 1].rfind('\n').map(|i| i + 1).unwrap_or(0);
        let line = &text[prev_start..end - 1];
        let content = line.trim_end();
        if !content.trim_start().is_empty() && !content.trim_start().starts_with('#') {
            return prev_start + content.len();
        }
        end = prev_start;
    }
    start
}

/// All recipes of a project, validated, by name.
#[derive(Debug)]
pub struct RecipeSet {
    pub recipes: BTreeMap<String, Recipe>,
}

impl RecipeSet {
    /// Loads and validates every `*.toml` in `<root>/recipes`.
    pub fn load(root: &Path) -> Result<RecipeSet, RecipeError> {
        let dir = root.join("recipes");
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| RecipeError {
                file: dir.clone(),
                line: 0,
                column: 0,
                message: format!(
                    "cannot read the recipes directory: {e} (is -C pointing at the project root?)"
                ),
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        paths.sort();
        let mut recipes = BTreeMap::new();
        for path in paths {
            let display = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
            let text = crate::project::read_project_file(&path).map_err(|e| RecipeError {
                file: display.clone(),
                line: 0,
                column: 0,
                message: format!("cannot read: {e}"),
            })?;
            let recipe = model::parse(
                root,
                &SourceFile {
                    display,
                    text: &text,
                },
            )?;
            recipes.insert(recipe.name.clone(), recipe);
        }
        let set = RecipeSet { recipes };
        set.check_graph()?;
        Ok(set)
    }

    fn check_graph(&self) -> Result<(), RecipeError> {
        for r in self.recipes.values() {
            for (dep, pos) in r.dependencies() {
                if !self.recipes.contains_key(&dep) {
                    let known: Vec<_> = self.recipes.keys().map(String::as_str).collect();
                    let what = if matches!(&r.from.value, From::Recipe(p) if *p == dep)
                        && pos.line == r.from.pos.line
                        && pos.column == r.from.pos.column
                    {
                        format!(
                            "unknown `from = \"{dep}\"`: no recipes/{dep}.toml (known recipes: {}; use \"scratch\" for an empty base)",
                            known.join(", ")
                        )
                    } else {
                        format!(
                            "unknown image `{dep}`: no recipes/{dep}.toml (known recipes: {})",
                            known.join(", ")
                        )
                    };
                    return Err(r.error_at(&pos, what));
                }
            }
        }
        // a cycle through any dependency (`from`, or an image a layer reads)
        fn visit<'a>(
            set: &'a RecipeSet,
            name: &'a str,
            path: &mut Vec<&'a str>,
            done: &mut BTreeSet<&'a str>,
        ) -> Result<(), RecipeError> {
            if done.contains(name) {
                return Ok(());
            }
            let r = &set.recipes[name];
            for (dep, pos) in r.dependencies() {
                let dep = set
                    .recipes
                    .get_key_value(&dep)
                    .map(|(k, _)| k.as_str())
                    .unwrap_or("");
                if let Some(i) = path.iter().position(|p| *p == dep) {
                    let mut chain: Vec<&str> = path[i..].to_vec();
                    chain.push(name);
                    chain.push(dep);
                    let how = if r.from.value == From::Recipe(dep.to_owned()) {
                        "`from` cycle"
                    } else {
                        "dependency cycle"
                    };
                    return Err(r.error_at(&pos, format!("{how}: {}", chain.join(" -> "))));
                }
                path.push(name);
                visit(set, dep, path, done)?;
                path.pop();
            }
            done.insert(name);
            Ok(())
        }
        let mut done = BTreeSet::new();
        for name in self.recipes.keys() {
            visit(self, name, &mut vec![], &mut done)?;
        }
        Ok(())
    }

    /// The named recipes plus everything they build on, bases first. `None` = all.
    pub fn closure(&self, names: Option<&[String]>) -> anyhow::Result<Vec<&Recipe>> {
        let wanted: Vec<&str> = match names {
            None => self.recipes.keys().map(String::as_str).collect(),
            Some(ns) => ns.iter().map(String::as_str).collect(),
        };
        let mut out: Vec<&Recipe> = vec![];
        let mut done = BTreeSet::new();
        fn visit<'a>(
            set: &'a RecipeSet,
            n: &str,
            done: &mut BTreeSet<String>,
            out: &mut Vec<&'a Recipe>,
        ) {
            if !done.insert(n.to_owned()) {
                return;
            }
            let r = &set.recipes[n];
            for (dep, _) in r.dependencies() {
                visit(set, &dep, done, out);
            }
            out.push(r);
        }
        for n in wanted {
            if !self.recipes.contains_key(n) {
                anyhow::bail!(
                    "no recipe named `{n}` (recipes: {})",
                    self.recipes.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            }
            visit(self, n, &mut done, &mut out);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_col(text: &str, span_start: usize, message: &str) -> (usize, usize) {
        let src = SourceFile {
            display: "r.toml".into(),
            text,
        };
        let e = src.syntax_error(span_start..span_start + 1, message.to_owned());
        (e.line, e.column)
    }

    #[test]
    fn syntax_errors_are_reported_where_the_bracket_is_missing() {
        // A missing `]` on line 2, noticed at `env` on line 4 (after a blank line
        // and a comment).
        let t = "[config]\ncmd = [\"a\"   \n\n# note\nenv = {}\n";
        let at = t.find("env").unwrap();
        assert_eq!(
            line_col(t, at, "missing comma between array elements, expected `,`"),
            (2, 11)
        );
        // ... or at the end of the file.
        let t = "[config]\ncmd = [\"a\"\n\n\n";
        assert_eq!(
            line_col(t, t.len(), "unclosed array, expected `]`"),
            (2, 11)
        );
        // An error in the middle of a line, or one that is not about something
        // left open, stays where it is.
        let t = "[config]\ncmd = [\"a\" \"b\"]\n";
        let at = t.find("\"b").unwrap();
        assert_eq!(
            line_col(t, at, "missing comma between array elements, expected `,`"),
            (2, 12)
        );
        let t = "[config]\nentrypont = []\n";
        assert_eq!(line_col(t, 9, "unknown field `entrypont`"), (2, 1));
    }
}
