use flate2::{Compress, Compression, FlushCompress};
fn main() {
    let data = std::fs::read(std::env::args().nth(1).unwrap()).unwrap();
    for level in [1u32, 2, 3, 4, 6] {
        for size in [256usize, 4096, 65536] {
            let mut c = Compress::new_with_window_bits(Compression::new(level), false, 15);
            let t = std::time::Instant::now();
            let mut total_in = 0usize; let mut total_out = 0usize;
            let mut out = Vec::with_capacity(size * 2 + 64);
            while total_in < 100 << 20 {
                let off = total_in % (data.len() - size);
                c.reset(); out.clear();
                c.compress_vec(&data[off..off + size], &mut out, FlushCompress::Sync).unwrap();
                total_in += size; total_out += out.len();
            }
            let s = t.elapsed().as_secs_f64();
            println!("level {level} size {size}: {:.0} MB/s ratio {:.3}", total_in as f64 / s / 1e6, total_out as f64 / total_in as f64);
        }
    }
}
