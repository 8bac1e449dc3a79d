//! Measures GzWriter throughput and ratio per level on a file:
//! `cargo run --release -p imgbuild-layer --example gzlevels -- FILE THREADS`
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let data = std::fs::read(&args[1]).unwrap();
    let threads: usize = args[2].parse().unwrap();
    for level in [1, 4, 6, 9] {
        let t = std::time::Instant::now();
        let mut total = 0;
        std::thread::scope(|sc| {
            let hs: Vec<_> = data
                .chunks(data.len().div_ceil(threads))
                .map(|part| {
                    sc.spawn(move || {
                        let mut c = libdeflater::Compressor::new(
                            libdeflater::CompressionLvl::new(level).unwrap(),
                        );
                        let mut n = 0;
                        for b in part.chunks(1 << 20) {
                            let mut out = vec![0u8; c.gzip_compress_bound(b.len())];
                            n += c.gzip_compress(b, &mut out).unwrap();
                        }
                        n
                    })
                })
                .collect();
            for h in hs {
                total += h.join().unwrap();
            }
        });
        let s = t.elapsed().as_secs_f64();
        println!(
            "libdeflate level {level}: {:.2} s, {:.0} MB/s, ratio {:.3}",
            s,
            data.len() as f64 / s / 1e6,
            total as f64 / data.len() as f64
        );
    }
    for level in [1, 6] {
        let t = std::time::Instant::now();
        let mut w =
            imgbuild_layer::gzip::GzWriter::with_level(std::io::sink(), threads, level).unwrap();
        std::io::Write::write_all(&mut w, &data).unwrap();
        let (_, n) = w.finish().unwrap();
        let s = t.elapsed().as_secs_f64();
        println!(
            "level {level}: {:.2} s, {:.0} MB/s, ratio {:.3}",
            s,
            data.len() as f64 / s / 1e6,
            n as f64 / data.len() as f64
        );
    }
}
