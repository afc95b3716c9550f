//! What compressing the `/metrics` page costs per render: `scripts/bench`
//! passes the page it fetched; this times `inferwatch::metrics::gzip` (the
//! daemon's own function, once per render) over 200 runs.
//!
//! Usage: cargo run --release --example gzip_cost -- PAGE_FILE

use std::time::Instant;

fn main() {
    let path = std::env::args().nth(1).expect("usage: gzip_cost PAGE_FILE");
    let page = std::fs::read(&path).expect("the page file");
    let mut times = Vec::with_capacity(200);
    let mut size = 0;
    for _ in 0..200 {
        let t = Instant::now();
        size = inferwatch::metrics::gzip(&page).len();
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!("plain_bytes={}", page.len());
    println!("gzip_bytes={size}");
    println!("median_us={:.0}", times[times.len() / 2]);
    println!("p99_us={:.0}", times[times.len() * 99 / 100]);
}
