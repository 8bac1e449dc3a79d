//! Byte-stable parallel gzip, in the manner of pigz.
//!
//! The uncompressed stream is cut into fixed [`BLOCK_SIZE`] blocks. Each block is
//! deflated on its own (no shared dictionary) and ended with a sync flush, which
//! byte-aligns it, so the compressed blocks can simply be concatenated; the last
//! block is finished normally. Because block boundaries depend only on the input
//! length, the output is identical for any number of worker threads, including
//! one, which runs the very same code inline. The gzip header is fixed (mtime 0,
//! no name, OS 255) and the trailer is the CRC-32 and length of the whole input.
//!
//! The bytes depend on: the block size, the level, and the deflate implementation
//! (zlib-rs, version pinned in Cargo.toml). [`CONTRACT`] names all three and is part
//! of every layer's cache key, so changing any of them rebuilds rather than mixes.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use flate2::{Compress, Compression, FlushCompress, Status};

/// Uncompressed bytes per independently deflated block. 1 MiB, as apko's pgzip
/// uses: large enough that the ratio loss against one stream is under 1%.
pub const BLOCK_SIZE: usize = 1 << 20;
/// zlib level 6, the `gzip`/`docker` default: the usual size/speed balance.
pub const LEVEL: u32 = 6;
/// Everything that determines the compressed bytes. Bump when any part changes.
pub const CONTRACT: &str =
    "gzip;deflate=zlib-rs-flate2-1.1.11;level=6;block=1048576;header=fixed-v1";

const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

type Job = (Vec<u8>, bool, SyncSender<io::Result<Vec<u8>>>);

/// A `Write` that gzips into `out` using `threads` workers (1 = inline).
pub struct GzWriter<W: Write> {
    out: W,
    buf: Vec<u8>,
    crc: crc32fast::Hasher,
    total: u64,
    pending: VecDeque<Receiver<io::Result<Vec<u8>>>>,
    jobs: Option<SyncSender<Job>>,
    workers: Vec<JoinHandle<()>>,
    max_in_flight: usize,
    compressed: u64,
}

fn deflate_block(input: &[u8], last: bool) -> io::Result<Vec<u8>> {
    let mut c = Compress::new(Compression::new(LEVEL), false);
    let mut out = Vec::with_capacity(input.len() / 2 + 1024);
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    loop {
        let consumed = c.total_in() as usize;
        if out.capacity() - out.len() < 64 * 1024 {
            out.reserve(256 * 1024);
        }
        let status = c
            .compress_vec(&input[consumed..], &mut out, flush)
            .map_err(|e| io::Error::other(format!("deflate failed: {e}")))?;
        let done_input = c.total_in() as usize == input.len();
        match status {
            Status::StreamEnd => break,
            // A sync flush is complete once all input is consumed and the
            // compressor stopped with room left in the output buffer.
            Status::Ok | Status::BufError if !last && done_input && out.len() < out.capacity() => {
                break;
            }
            _ => {}
        }
    }
    Ok(out)
}

impl<W: Write> GzWriter<W> {
    pub fn new(mut out: W, threads: usize) -> io::Result<Self> {
        out.write_all(&GZIP_HEADER)?;
        let threads = threads.max(1);
        let (jobs, workers) = if threads > 1 {
            let (tx, rx) = sync_channel::<Job>(threads * 2);
            let rx = Arc::new(Mutex::new(rx));
            let workers = (0..threads)
                .map(|_| {
                    let rx = Arc::clone(&rx);
                    std::thread::spawn(move || {
                        loop {
                            let job = rx.lock().expect("job queue").recv();
                            let Ok((data, last, reply)) = job else { break };
                            let _ = reply.send(deflate_block(&data, last));
                        }
                    })
                })
                .collect();
            (Some(tx), workers)
        } else {
            (None, vec![])
        };
        Ok(GzWriter {
            out,
            buf: Vec::with_capacity(BLOCK_SIZE),
            crc: crc32fast::Hasher::new(),
            total: 0,
            pending: VecDeque::new(),
            jobs,
            workers,
            max_in_flight: threads * 2,
            compressed: GZIP_HEADER.len() as u64,
        })
    }

    fn dispatch(&mut self, last: bool) -> io::Result<()> {
        let data = std::mem::replace(
            &mut self.buf,
            if last {
                Vec::new()
            } else {
                Vec::with_capacity(BLOCK_SIZE)
            },
        );
        match &self.jobs {
            None => {
                let block = deflate_block(&data, last)?;
                self.compressed += block.len() as u64;
                self.out.write_all(&block)?;
            }
            Some(tx) => {
                let (rtx, rrx) = sync_channel(1);
                tx.send((data, last, rtx))
                    .map_err(|_| io::Error::other("compression worker stopped"))?;
                self.pending.push_back(rrx);
                while self.pending.len() > if last { 0 } else { self.max_in_flight } {
                    self.drain_one()?;
                }
            }
        }
        Ok(())
    }

    fn drain_one(&mut self) -> io::Result<()> {
        if let Some(rx) = self.pending.pop_front() {
            let block = rx
                .recv()
                .map_err(|_| io::Error::other("compression worker stopped"))??;
            self.compressed += block.len() as u64;
            self.out.write_all(&block)?;
        }
        Ok(())
    }

    /// Finishes the stream; returns the inner writer and the compressed size.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.dispatch(true)?;
        let mut trailer = [0u8; 8];
        trailer[..4].copy_from_slice(&self.crc.clone().finalize().to_le_bytes());
        trailer[4..].copy_from_slice(&(self.total as u32).to_le_bytes());
        self.out.write_all(&trailer)?;
        self.compressed += 8;
        self.jobs = None; // closes the queue; workers exit
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        self.out.flush()?;
        let GzWriter {
            out, compressed, ..
        } = self;
        Ok((out, compressed))
    }
}

impl<W: Write> Write for GzWriter<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let n = data.len();
        self.crc.update(data);
        self.total += n as u64;
        while !data.is_empty() {
            let room = BLOCK_SIZE - self.buf.len();
            let take = room.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == BLOCK_SIZE {
                self.dispatch(false)?;
            }
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample(len: usize) -> Vec<u8> {
        // compressible but not trivial: a text-like pseudo-random sequence
        let mut x: u32 = 12345;
        (0..len)
            .map(|_| {
                x = x.wrapping_mul(1103515245).wrapping_add(12345);
                b"abcdefgh ijklmnop\nqrstuvwxyz0123"[(x >> 16) as usize % 32]
            })
            .collect()
    }

    fn gz(data: &[u8], threads: usize, chunk: usize) -> Vec<u8> {
        let mut w = GzWriter::new(Vec::new(), threads).unwrap();
        for c in data.chunks(chunk) {
            w.write_all(c).unwrap();
        }
        w.finish().unwrap().0
    }

    #[test]
    fn identical_for_any_thread_count_and_write_pattern() {
        for len in [
            0,
            1,
            BLOCK_SIZE - 1,
            BLOCK_SIZE,
            BLOCK_SIZE + 1,
            3 * BLOCK_SIZE + 777,
        ] {
            let data = sample(len);
            let one = gz(&data, 1, 4096);
            for (threads, chunk) in [(2, 1 << 16), (3, 999), (8, BLOCK_SIZE * 2)] {
                assert_eq!(
                    one,
                    gz(&data, threads, chunk),
                    "len {len} threads {threads}"
                );
            }
            // and it is valid gzip that round-trips
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&one[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data, "len {len}");
        }
    }
}
