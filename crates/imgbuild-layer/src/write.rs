//! The one place where a [`Tree`] becomes a layer blob.
//!
//! A single pass: entries are written in tree order (sorted by path bytes) as tar
//! with normalised headers, the tar stream is hashed (the layer's `diff_id`),
//! gzipped by [`crate::gzip`], and the compressed stream is hashed and written to a
//! store blob (the layer's digest). Content is streamed from its source; nothing
//! larger than one compression block is held in memory.
//!
//! Header normalisation, and why each value is fixed:
//! - mtime = the caller's epoch (`SOURCE_DATE_EPOCH`, default 0): host times must not leak in;
//! - uid/gid from the tree (sources decide ownership), user and group *names* empty:
//!   names would depend on the build host's passwd;
//! - mode = the tree's 12 permission bits; symlinks 0777 (Linux ignores them, tar
//!   tools expect 0777);
//! - GNU format with LongName/LongLink records for paths over 100 bytes (Docker,
//!   containerd, podman and umoci read them);
//! - no atime/ctime, no device numbers, no extended attributes.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use imgbuild_store::{Descriptor, Digest, HashingWriter, Store, StoreError, media};

use crate::file_hash::HashingFileReader;
use crate::gzip::GzWriter;
use crate::tree::{Content, Node, Tree};

/// Settings that change a layer's bytes; all of them go into the cache key via
/// [`WriteOptions::contract`].
#[derive(Clone, Debug)]
pub struct WriteOptions {
    /// The mtime of every entry (seconds since the Unix epoch).
    pub mtime: u64,
    /// Compression worker threads. Does not change the bytes (see [`crate::gzip`]).
    pub threads: usize,
}

impl WriteOptions {
    /// Everything about the encoding that the bytes depend on, as a string for cache keys.
    pub fn contract(&self) -> String {
        format!(
            "tar=gnu-normalised-v1;mtime={};{}",
            self.mtime,
            crate::gzip::CONTRACT
        )
    }
}

/// A finished layer in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerBlob {
    /// The compressed blob as the manifest names it (gzip media type).
    pub descriptor: Descriptor,
    /// sha256 of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: Digest,
    /// Uncompressed size.
    pub tar_size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("failed to read `{path}` for layer entry `{entry}`: {source}")]
    Read {
        path: String,
        entry: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "`{path}` changed while the layer was being written (expected {expected} bytes, found {actual}); run the build again"
    )]
    Changed {
        path: String,
        expected: u64,
        actual: u64,
    },
    #[error(
        "`{path}` changed while the layer was being written (its content no longer matches the hash taken for the layer's fingerprint); run the build again"
    )]
    ContentChanged { path: String },
    #[error("failed to write layer: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Tree(#[from] crate::tree::TreeError),
}

/// Writes `tree` as a gzipped tar layer into `store`.
pub fn write_layer(
    tree: &Tree,
    opts: &WriteOptions,
    store: &Store,
) -> Result<LayerBlob, WriteError> {
    tree.validate()?;
    // the store's blob writer hashes the compressed stream itself (the digest)
    let blob = store.writer()?;
    let gz = GzWriter::new(blob, opts.threads)?;
    let tar_hash = HashingWriter::new(BufWriter::with_capacity(256 * 1024, gz));
    let mut builder = tar::Builder::new(tar_hash);
    write_entries(&mut builder, tree, opts.mtime)?;
    let tar_hash = builder.into_inner()?; // writes the two zero end blocks
    let (buf, diff_id, tar_size) = tar_hash.finish();
    let gz = buf.into_inner().map_err(|e| e.into_error())?;
    let (blob, _) = gz.finish()?;
    let (stored, stored_size) = blob.commit()?;
    Ok(LayerBlob {
        descriptor: Descriptor::new(media::LAYER_GZIP, stored, stored_size),
        diff_id,
        tar_size,
    })
}

fn base_header(mtime: u64, mode: u32, uid: u32, gid: u32, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid as u64);
    h.set_gid(gid as u64);
    h.set_mtime(mtime);
    h.set_size(0);
    h
}

fn write_entries<W: Write>(
    b: &mut tar::Builder<W>,
    tree: &Tree,
    mtime: u64,
) -> Result<(), WriteError> {
    for (path, node) in tree.iter() {
        let name = path.as_str();
        match node {
            Node::Dir(m) => {
                let mut h = base_header(mtime, m.mode, m.uid, m.gid, tar::EntryType::Directory);
                b.append_data(&mut h, format!("{name}/"), io::empty())?;
            }
            Node::Symlink { meta, target } => {
                let mut h = base_header(mtime, 0o777, meta.uid, meta.gid, tar::EntryType::Symlink);
                b.append_link(&mut h, name, target)?;
            }
            Node::Hardlink { target } => {
                let mut h = base_header(mtime, 0o644, 0, 0, tar::EntryType::Link);
                // A hardlink's metadata is its target's; copy it so tools that look agree.
                if let Some(Node::File { meta, .. }) = tree.get(target) {
                    h.set_mode(meta.mode);
                    h.set_uid(meta.uid as u64);
                    h.set_gid(meta.gid as u64);
                }
                b.append_link(&mut h, name, target.as_str())?;
            }
            Node::File { meta, content } => {
                let mut h = base_header(
                    mtime,
                    meta.mode,
                    meta.uid,
                    meta.gid,
                    tar::EntryType::Regular,
                );
                let size = content.size();
                h.set_size(size);
                match content {
                    Content::Inline(bytes) => b.append_data(&mut h, name, &bytes[..])?,
                    Content::Host {
                        path: src,
                        size,
                        hash,
                    } => {
                        let f = open(src, name)?;
                        let actual = f.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
                        let f = buffered(f, *size);
                        if actual != *size {
                            return Err(WriteError::Changed {
                                path: src.display().to_string(),
                                expected: *size,
                                actual,
                            });
                        }
                        // The bytes must be the ones the fingerprint was computed from:
                        // a same-size edit between hashing and writing would otherwise
                        // store new bytes under the old fingerprint (a poisoned cache).
                        match hash {
                            Some(expected) => {
                                let mut hashed = HashingFileReader::new(f);
                                append_exact(b, &mut h, name, &mut hashed, *size, src)?;
                                if hashed.finish().0 != *expected {
                                    return Err(WriteError::ContentChanged {
                                        path: src.display().to_string(),
                                    });
                                }
                            }
                            None => append_exact(b, &mut h, name, f, *size, src)?,
                        }
                    }
                    Content::Range {
                        path: src,
                        offset,
                        size,
                    } => {
                        let mut f = open(src, name)?;
                        f.seek(SeekFrom::Start(*offset))
                            .map_err(|e| read_err(src, name, e))?;
                        append_exact(b, &mut h, name, buffered(f, *size), *size, src)?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// A read buffer sized to the entry (at most 256 KiB). It must sit right on the
/// `File`: `File` fills a buffer without zeroing it first, other readers do not,
/// and zeroing 256 KiB for each of 10,000 small files showed up in profiles.
fn buffered(f: File, size: u64) -> io::BufReader<File> {
    io::BufReader::with_capacity((size as usize).clamp(8 * 1024, 256 * 1024), f)
}

fn open(src: &Path, entry: &str) -> Result<File, WriteError> {
    File::open(src).map_err(|e| read_err(src, entry, e))
}

fn read_err(src: &Path, entry: &str, source: io::Error) -> WriteError {
    WriteError::Read {
        path: src.display().to_string(),
        entry: format!("/{entry}"),
        source,
    }
}

/// Appends exactly `size` bytes from `f`; a source that ends early is an error,
/// never a silently truncated entry.
fn append_exact<W: Write>(
    b: &mut tar::Builder<W>,
    h: &mut tar::Header,
    name: &str,
    f: impl Read,
    size: u64,
    src: &Path,
) -> Result<(), WriteError> {
    let mut reader = ExactReader {
        inner: f.take(size),
        left: size,
    };
    b.append_data(h, name, &mut reader).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            WriteError::Changed {
                path: src.display().to_string(),
                expected: size,
                actual: size - reader.left,
            }
        } else {
            WriteError::Io(e)
        }
    })
}

struct ExactReader<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "source ended early",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Meta, TreePath};

    fn p(s: &str) -> TreePath {
        TreePath::new(s).unwrap()
    }

    #[test]
    fn layer_bytes_are_stable_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let host = dir.path().join("big");
        std::fs::write(&host, vec![7u8; 3 << 20]).unwrap();
        let long = format!("deep/{}/file", "n".repeat(150));
        let mut t = Tree::new();
        t.insert(
            p("bin/hello"),
            Node::File {
                meta: Meta::new(0o4755, 0, 0),
                content: Content::inline(*b"hi\n"),
            },
        )
        .unwrap();
        t.insert(p("data"), Node::Dir(Meta::new(0o1777, 0, 0)))
            .unwrap();
        t.insert(
            p(&long),
            Node::File {
                meta: Meta::FILE,
                content: Content::Host {
                    path: host.clone(),
                    size: 3 << 20,
                    hash: Some(crate::FileHash::of_bytes(&vec![7u8; 3 << 20])),
                },
            },
        )
        .unwrap();
        t.insert(
            p("bin/hi"),
            Node::Hardlink {
                target: p("bin/hello"),
            },
        )
        .unwrap();
        t.insert(
            p("usr/bin/x"),
            Node::Symlink {
                meta: Meta::FILE,
                target: "/bin/hello".into(),
            },
        )
        .unwrap();
        let a = write_layer(
            &t,
            &WriteOptions {
                mtime: 0,
                threads: 1,
            },
            &store,
        )
        .unwrap();
        let b = write_layer(
            &t,
            &WriteOptions {
                mtime: 0,
                threads: 4,
            },
            &store,
        )
        .unwrap();
        assert_eq!(a, b);
        let c = write_layer(
            &t,
            &WriteOptions {
                mtime: 1700000000,
                threads: 2,
            },
            &store,
        )
        .unwrap();
        assert_ne!(a.descriptor.digest, c.descriptor.digest);

        // read it back with the tar crate
        let f = store.open_verified(&a.descriptor.digest).unwrap();
        let mut ar = tar::Archive::new(flate2::read::MultiGzDecoder::new(f));
        let mut seen = vec![];
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            seen.push((
                e.path().unwrap().display().to_string(),
                h.mode().unwrap(),
                h.mtime().unwrap(),
            ));
        }
        let names: Vec<_> = seen.iter().map(|s| s.0.as_str()).collect();
        let deep = format!("deep/{}/", "n".repeat(150));
        assert_eq!(
            names,
            [
                "bin/",
                "bin/hello",
                "bin/hi",
                "data/",
                "deep/",
                &deep,
                &long,
                "usr/",
                "usr/bin/",
                "usr/bin/x"
            ]
        );
        assert_eq!(seen[1].1, 0o4755);
        assert_eq!(seen[3].1, 0o1777);
        assert!(seen.iter().all(|s| s.2 == 0));
    }

    #[test]
    fn a_file_that_changed_size_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let host = dir.path().join("f");
        std::fs::write(&host, b"12345").unwrap();
        let mut t = Tree::new();
        t.insert(
            p("f"),
            Node::File {
                meta: Meta::FILE,
                content: Content::Host {
                    path: host,
                    size: 3,
                    hash: None,
                },
            },
        )
        .unwrap();
        let err = write_layer(
            &t,
            &WriteOptions {
                mtime: 0,
                threads: 1,
            },
            &store,
        )
        .unwrap_err();
        assert!(matches!(err, WriteError::Changed { .. }), "{err}");
        assert_eq!(
            std::fs::read_dir(dir.path().join("store/tmp"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn a_same_size_edit_after_hashing_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let host = dir.path().join("f");
        std::fs::write(&host, b"12345").unwrap();
        let mut t = Tree::new();
        t.insert(
            p("f"),
            Node::File {
                meta: Meta::FILE,
                content: Content::Host {
                    path: host.clone(),
                    size: 5,
                    hash: Some(crate::FileHash::of_bytes(b"12345")),
                },
            },
        )
        .unwrap();
        let opts = WriteOptions {
            mtime: 0,
            threads: 1,
        };
        write_layer(&t, &opts, &store).unwrap();
        // same size, other bytes: the fingerprint's hash no longer holds
        std::fs::write(&host, b"54321").unwrap();
        let err = write_layer(&t, &opts, &store).unwrap_err();
        assert!(matches!(err, WriteError::ContentChanged { .. }), "{err}");
        assert!(err.to_string().contains("run the build again"), "{err}");
        assert_eq!(
            std::fs::read_dir(dir.path().join("store/tmp"))
                .unwrap()
                .count(),
            0
        );
    }
}
