//! The provenance of an image: an in-toto Statement v1 whose predicate is SLSA
//! provenance v1 (`https://slsa.dev/provenance/v1`).
//!
//! It names what the image was built from: the recipe files of the image and of the
//! recipes it is built on, `imgbuild.lock` and `imgbuild.toml` (each by sha256), the
//! git commit of the checkout and whether the tree was clean, the registry base
//! image by digest, and the build's parameters (imgbuild version, epoch). No clock,
//! host name or invocation id: the same checkout gives the same statement, so it can
//! be cached with the image and compared across builders.

use std::path::Path;
use std::process::Command;

use anyhow::Result;
use imgbuild_store::Digest;
use serde::Serialize;
use serde_json::json;

use crate::cache::ImageRecord;
use crate::oci::canonical;
use crate::project::Project;

/// The checkout's git state, read once per command.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct GitState {
    /// `None`: not a git checkout (or git is not installed).
    pub commit: Option<String>,
    /// No change to tracked files and no untracked file.
    pub clean: bool,
    /// `remote.origin.url`, when set.
    pub remote: Option<String>,
}

impl GitState {
    pub fn read(root: &Path) -> GitState {
        let git = |args: &[&str]| -> Option<String> {
            let o = Command::new("git")
                .arg("-C")
                .arg(root)
                .args(args)
                .output()
                .ok()?;
            o.status
                .success()
                .then(|| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        };
        // one process for the commit and the cleanliness: `# branch.oid <commit>`
        // (`(initial)` before the first commit), then one line per change
        let Some(status) = git(&["status", "--porcelain=v2", "--branch"]) else {
            return GitState::default();
        };
        let Some(commit) = status
            .lines()
            .find_map(|l| l.strip_prefix("# branch.oid "))
            .filter(|c| c.len() >= 40 && c.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_owned)
        else {
            return GitState::default();
        };
        let clean = status.lines().all(|l| l.starts_with('#'));
        let remote = git(&["config", "--get", "remote.origin.url"]).filter(|s| !s.is_empty());
        GitState {
            commit: Some(commit),
            clean,
            remote,
        }
    }
}

/// A project file the image was built from.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SourceFile {
    /// Relative to the project root.
    pub path: String,
    pub sha256: Digest,
}

/// Everything the statement says (also the key under which it is cached).
#[derive(Clone, Debug, Serialize)]
pub struct Params {
    pub image: String,
    pub files: Vec<SourceFile>,
    pub git: GitState,
    /// Registry base images (pinned reference with digest).
    pub base_images: Vec<String>,
    /// Recipes it is built on, nearest first.
    pub base_recipes: Vec<String>,
}

impl Params {
    pub fn collect(project: &Project, record: &ImageRecord, git: &GitState) -> Result<Params> {
        let mut recipes = vec![record.name.clone()];
        let mut base_images: Vec<String> = record.base_image.iter().cloned().collect();
        let mut next = record.base.clone();
        while let Some(b) = next {
            if recipes.contains(&b) {
                break;
            }
            recipes.push(b.clone());
            next = match ImageRecord::load(&project.store, &project.key, &b)? {
                Some(r) => {
                    base_images.extend(r.base_image.clone());
                    r.base
                }
                None => None,
            };
        }
        let mut paths: Vec<String> = recipes
            .iter()
            .map(|r| format!("recipes/{r}.toml"))
            .collect();
        paths.push(crate::lockfile::FILE.into());
        paths.push("imgbuild.toml".into());
        let mut files = vec![];
        for p in paths {
            if let Ok(bytes) = std::fs::read(project.root.join(&p)) {
                files.push(SourceFile {
                    path: p,
                    sha256: Digest::of_bytes(&bytes),
                });
            }
        }
        base_images.sort();
        base_images.dedup();
        Ok(Params {
            image: record.name.clone(),
            files,
            git: git.clone(),
            base_images,
            base_recipes: recipes[1..].to_vec(),
        })
    }
}

/// The in-toto statement (canonical bytes).
pub fn statement(record: &ImageRecord, p: &Params, epoch: u64) -> Vec<u8> {
    let mut deps = vec![];
    if let Some(commit) = &p.git.commit {
        deps.push(json!({
            "uri": match &p.git.remote {
                Some(r) => format!("git+{r}"),
                None => "git+file:.".to_owned(),
            },
            "digest": { "gitCommit": commit },
            "annotations": { "clean": p.git.clean },
        }));
    }
    for f in &p.files {
        deps.push(json!({
            "name": f.path,
            "digest": { "sha256": f.sha256.hex() },
        }));
    }
    for b in &p.base_images {
        let digest = b.rsplit_once("@sha256:").map(|(_, h)| h).unwrap_or("");
        deps.push(json!({
            "uri": format!("oci://{b}"),
            "digest": { "sha256": digest },
        }));
    }
    let subject_name = record.repository.clone().unwrap_or(record.name.clone());
    canonical(&json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{
            "name": subject_name,
            "digest": { "sha256": record.manifest_digest.hex() },
        }],
        "predicateType": "https://slsa.dev/provenance/v1",
        "predicate": {
            "buildDefinition": {
                "buildType": "https://imgbuild.invalid/buildtypes/recipe/v1",
                "externalParameters": {
                    "image": p.image,
                    "recipe": format!("recipes/{}.toml", p.image),
                    "baseRecipes": p.base_recipes,
                },
                "internalParameters": {
                    "imgbuildVersion": env!("CARGO_PKG_VERSION"),
                    "sourceDateEpoch": epoch,
                    "gitClean": p.git.clean,
                },
                "resolvedDependencies": deps,
            },
            "runDetails": {
                "builder": {
                    "id": format!("https://imgbuild.invalid/imgbuild@{}", env!("CARGO_PKG_VERSION")),
                    "version": { "imgbuild": env!("CARGO_PKG_VERSION") },
                },
                "metadata": {},
            },
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(dir: &Path, args: &[&str]) {
        let ok = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.org"])
            .args(args)
            .output()
            .expect("git")
            .status
            .success();
        assert!(ok, "git {args:?}");
    }

    #[test]
    fn git_state_names_the_commit_and_whether_the_tree_is_clean() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // not a checkout, then a checkout without a commit: no commit named
        assert_eq!(GitState::read(root).commit, None);
        git(root, &["init", "-q"]);
        assert_eq!(GitState::read(root).commit, None);
        std::fs::write(root.join("a"), "1").unwrap();
        git(root, &["add", "a"]);
        git(root, &["commit", "-q", "-m", "one"]);
        let s = GitState::read(root);
        let commit = s.commit.clone().expect("a commit");
        assert_eq!(commit.len(), 40);
        assert!(s.clean);
        // a change to a tracked file, then an untracked file: not clean
        std::fs::write(root.join("a"), "2").unwrap();
        let s = GitState::read(root);
        assert_eq!(s.commit.as_deref(), Some(commit.as_str()));
        assert!(!s.clean);
        git(root, &["checkout", "-q", "a"]);
        std::fs::write(root.join("b"), "new").unwrap();
        assert!(!GitState::read(root).clean);
    }
}
