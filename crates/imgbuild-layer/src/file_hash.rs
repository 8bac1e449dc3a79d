//! The content hash of a project file: what a layer's fingerprint names it by, and
//! what the writer checks the file against as it goes into the tar.
//!
//! BLAKE3 rather than SHA-256: this hash never leaves imgbuild (registries, Debian
//! and PyPI define their own digests, and those stay SHA-256); it only has to be
//! collision-resistant, and a cold build of a 100 MB tree hashes every file twice
//! (for the fingerprint, then while writing). BLAKE3 runs several times faster than
//! SHA-256 with SHA-NI on the same core, and that time sits on the critical path.

use std::fmt;
use std::io::{self, Read};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileHash([u8; 32]);

impl FileHash {
    pub fn of_bytes(bytes: &[u8]) -> FileHash {
        FileHash(*blake3::hash(bytes).as_bytes())
    }

    /// The hash of everything `r` yields, and how many bytes that was. `size_hint`
    /// (the file's size, if known) sizes the read buffer: most project files are
    /// small, and zeroing a large buffer for each of 10,000 of them costs more than
    /// hashing them.
    pub fn of_reader(mut r: impl Read, size_hint: u64) -> io::Result<(FileHash, u64)> {
        let mut h = FileHasher::default();
        let mut buf = vec![0u8; (size_hint.saturating_add(1)).clamp(512, 128 * 1024) as usize];
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            h.update(&buf[..n]);
        }
        Ok(h.finish())
    }

    /// Parses [`FileHash`]'s `Display` form without the prefix (64 hex digits).
    pub fn from_hex(hex: &str) -> Option<FileHash> {
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(FileHash(out))
    }

    pub fn hex(&self) -> String {
        let mut buf = [0u8; 64];
        String::from(self.hex_into(&mut buf))
    }

    /// Hex digits written into `buf` (no allocation: a fingerprint formats one
    /// hash per file of the layer, on every build).
    fn hex_into<'b>(&self, buf: &'b mut [u8; 64]) -> &'b str {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for (i, b) in self.0.iter().enumerate() {
            buf[2 * i] = DIGITS[(b >> 4) as usize];
            buf[2 * i + 1] = DIGITS[(b & 15) as usize];
        }
        std::str::from_utf8(buf).expect("hex digits are ASCII")
    }
}

impl fmt::Display for FileHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 64];
        f.write_str("blake3:")?;
        f.write_str(self.hex_into(&mut buf))
    }
}

impl fmt::Debug for FileHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for FileHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Hashes bytes as they pass (see [`FileHash`]).
#[derive(Default)]
pub struct FileHasher {
    inner: blake3::Hasher,
    len: u64,
}

impl FileHasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.inner.update(bytes);
        self.len += bytes.len() as u64;
    }
    pub fn finish(self) -> (FileHash, u64) {
        (FileHash(*self.inner.finalize().as_bytes()), self.len)
    }
}

/// A reader that hashes what passes through it.
pub struct HashingFileReader<R> {
    inner: R,
    hasher: FileHasher,
}

impl<R: Read> HashingFileReader<R> {
    pub fn new(inner: R) -> Self {
        HashingFileReader {
            inner,
            hasher: FileHasher::default(),
        }
    }
    pub fn finish(self) -> (FileHash, u64) {
        self.hasher.finish()
    }
}

impl<R: Read> Read for HashingFileReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_value_and_round_trip() {
        // BLAKE3 of the empty input (from the BLAKE3 test vectors)
        let empty = FileHash::of_bytes(b"");
        assert_eq!(
            empty.hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert_eq!(FileHash::from_hex(&empty.hex()), Some(empty));
        let data = vec![7u8; 200_000];
        assert_eq!(
            FileHash::of_reader(&data[..], 0).unwrap(),
            (FileHash::of_bytes(&data), 200_000)
        );
        assert_eq!(FileHash::from_hex("zz"), None);
    }
}
