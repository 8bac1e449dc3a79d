//! Sources pinned to a git commit (`name @ git+https://…@<commit>` requirements),
//! fetched with the `git` CLI, a tool made for the job (every transport, smart and dumb
//! HTTP, the user's credential helpers, object verification), rather than a library
//! of our own.
//!
//! A fetch goes into a fresh bare repository in the store's temp dir: the commit by
//! its id first, and when the server does not serve ids (dumb HTTP, some smart
//! servers), every branch and tag; then the commit must exist as a commit object
//! (`git rev-parse --verify <id>^{commit}`), which git has verified against its id as
//! it stored it: a commit the repository does not have is refused, whatever its
//! branches point at now. Its tree is archived by `git archive` (entries in tree
//! order, mtimes the commit's time, no host owners) under `<name>-0+git.<commit>/`,
//! gzipped without a name or time in the header, and stored as a blob: the same
//! commit gives the same bytes. A record ([`Bucket::GitArchives`], keyed by commit
//! and prefix) remembers the blob and the tree id, so a commit is fetched once per
//! store.
//!
//! The same archive serves `files = [ { git, rev, dest } ]` ([`tree_nodes`]): its tar,
//! decompressed once into a store spool, becomes the layer's entries below `dest`,
//! each file a range of the spool (streamed when the layer is written).

use std::io::Write;
use std::process::{Command, Stdio};

use std::io::BufReader;

use anyhow::{Context, Result, bail};
use imgbuild_layer::Node;
use imgbuild_store::{Bucket, Digest, Store};
use sha2::Digest as _;

use super::sandbox::TempDir;

/// A commit's tree, archived.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct GitArchive {
    /// `spam-0+git.<commit>.tar.gz`
    pub filename: String,
    /// The `.tar.gz` blob.
    pub digest: Digest,
    /// The commit's tree id (what `git rev-parse <commit>^{tree}` says).
    pub tree: String,
}

fn git(dir: &std::path::Path) -> Command {
    let mut c = Command::new("git");
    c.arg("-C")
        .arg(dir)
        // never ask on a terminal: a build has none to answer
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null());
    c
}

fn run(mut c: Command, what: &str) -> Result<String> {
    let out = c.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow::anyhow!("`git` is not installed: git sources are fetched with it; install it (apt-get install git)")
        } else {
            anyhow::anyhow!("failed to run git to {what}: {e}")
        }
    })?;
    if !out.status.success() {
        bail!(
            "git failed to {what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The archive of `commit` of `url`, named for `name` (a PEP 503 key), from the store
/// or fetched once.
pub fn archive(store: &Store, url: &str, commit: &str, name: &str) -> Result<GitArchive> {
    // credentials in the URL go to git, never into a message
    let shown = imgbuild_python::error::redact_url(url);
    let prefix = format!("{name}-0+git.{commit}");
    let key = hex::encode(sha2::Sha256::digest(format!(
        "{}\n{commit}\n{prefix}\n",
        Bucket::GitArchives.name()
    )));
    if let Some(a) = store
        .read_record(Bucket::GitArchives, &key)?
        .and_then(|b| serde_json::from_slice::<GitArchive>(&b).ok())
        .filter(|a| store.has_blob(&a.digest))
    {
        return Ok(a);
    }
    let tmp = TempDir(store.temp_dir()?);
    let repo = tmp.0.join("repo.git");
    run(
        {
            let mut c = git(&tmp.0);
            c.args(["init", "--quiet", "--bare"]).arg(&repo);
            c
        },
        "create a repository",
    )?;
    let fetch = |refspecs: &[&str]| {
        let mut c = git(&repo);
        c.args(["fetch", "--quiet", "--no-tags", "--", url]);
        c.args(refspecs);
        run(c, &format!("fetch {shown}"))
            .map_err(|e| anyhow::anyhow!("{}", format!("{e:#}").replace(url, &shown)))
    };
    let by_id = fetch(&[&format!("{commit}:refs/imgbuild/pinned")]);
    if by_id.is_err() {
        fetch(&[
            "+refs/heads/*:refs/imgbuild/heads/*",
            "+refs/tags/*:refs/imgbuild/tags/*",
        ])?;
    }
    let found = run(
        {
            let mut c = git(&repo);
            c.args(["rev-parse", "--verify", "--quiet"])
                .arg(format!("{commit}^{{commit}}"));
            c
        },
        "find the commit",
    );
    match found {
        Ok(id) if id == commit => {}
        _ => bail!(
            "{shown} has no commit {commit}: the requirement pins a commit the repository does not have \
             (check the id, or whether it was force-pushed away)"
        ),
    }
    let tree = run(
        {
            let mut c = git(&repo);
            c.args(["rev-parse", &format!("{commit}^{{tree}}")]);
            c
        },
        "read the commit's tree",
    )?;
    // modes 0644/0755 (git's default tar.umask 002 would make them group-writable)
    let mut child = git(&repo)
        .args(["-c", "tar.umask=022", "archive", "--format=tar"])
        .arg(format!("--prefix={prefix}/"))
        .arg(commit)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("failed to run git archive")?;
    let mut w = store.writer()?;
    {
        // no file name and mtime 0 in the gzip header: the bytes depend on the tree only
        let mut gz = flate2::GzBuilder::new().write(&mut w, flate2::Compression::default());
        std::io::copy(child.stdout.as_mut().expect("piped"), &mut gz)?;
        gz.finish()?.flush()?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "git archive of {commit} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let (digest, _) = w.commit()?;
    let a = GitArchive {
        filename: format!("{prefix}.tar.gz"),
        digest,
        tree,
    };
    store.write_record(Bucket::GitArchives, &key, &serde_json::to_vec(&a)?)?;
    Ok(a)
}

/// A commit's tree as layer entries.
pub struct TreeNodes {
    /// (path below the tree's root, `""` for the root itself; its node), in tar order.
    pub nodes: Vec<(String, Node)>,
    /// The archive and its decompressed spool, which the nodes point into.
    pub blobs: Vec<Digest>,
}

/// The files of `commit` of `url`: modes as git keeps them (0644, 0755, symlinks),
/// owned by `owner`.
pub fn tree_nodes(store: &Store, url: &str, commit: &str, owner: (u32, u32)) -> Result<TreeNodes> {
    let a = archive(store, url, commit, "tree")?;
    let mut spool = store.writer()?;
    std::io::copy(
        &mut flate2::read::GzDecoder::new(BufReader::new(std::fs::File::open(
            store.blob_path(&a.digest),
        )?)),
        &mut spool,
    )
    .context("decompressing the git archive")?;
    let (spool, _) = spool.commit()?;
    let path = store.blob_path(&spool);
    let mut tar = tar::Archive::new(BufReader::new(std::fs::File::open(&path)?));
    let mut nodes = vec![];
    for entry in tar.entries()? {
        let entry = entry?;
        let raw = entry.path()?.to_string_lossy().into_owned();
        // below the archive's one top directory (`tree-0+git.<commit>/`)
        let rel = match raw.trim_end_matches('/').split_once('/') {
            Some((_, r)) => r.to_owned(),
            None => String::new(),
        };
        let Some(node) = super::archive::spooled_entry_node(&entry, &path, owner)? else {
            continue; // pax headers (the commit id), which git archive writes
        };
        nodes.push((rel, node));
    }
    Ok(TreeNodes {
        nodes,
        blobs: vec![a.digest, spool],
    })
}
