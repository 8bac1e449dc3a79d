//! One image layer: a sorted tree of entries ([`Tree`]) that every layer source
//! (local files, Debian packages, Python wheels) fills in, and the single place where
//! a tree becomes bytes ([`write`]).
//!
//! Sources only decide *what* is in a layer. Everything that makes a layer
//! reproducible lives here: entry order (sorted by path bytes), header normalisation,
//! mtimes, long names, hardlinks, compression settings. Content is referenced, not
//! held: a [`Content`] points at a file or a byte range of a spool file and is read
//! once, streaming, when the tar is written.
//!
//! Reading goes the other way: [`image`] merges the layer blobs an image is made of
//! (whiteouts applied) into its file system, and [`symlinks`] is the one walk through
//! an image's symlinks that every source uses. [`linkage`] checks on top of both that
//! the ELF files a layer adds find their libraries and loader in the image.

pub mod tree;
pub use tree::{Content, Meta, Node, Tree, TreeError, TreePath};
pub mod file_hash;
pub use file_hash::{FileHash, FileHasher, HashingFileReader};
pub mod gzip;
pub mod image;
pub mod linkage;
pub mod symlinks;
pub use symlinks::{Follow, ResolveError};
pub mod write;
pub use write::{LayerBlob, WriteError, WriteOptions, write_layer};
