//! Native run of the verification microbenchmark: time per check for each algorithm, as a
//! ratio to ES256K of the same run. `verify-native [iterations]`.

use std::time::Instant;

use x402_verify_bench::{token_len, verify_loop, ALGS};

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let mut per: Vec<f64> = Vec::new();
    for alg in 0..ALGS.len() as u32 {
        // Warm-up, then the median of 5 rounds.
        verify_loop(alg, n / 10 + 1);
        let mut rounds: Vec<f64> = (0..5)
            .map(|_| {
                let t = Instant::now();
                let ok = verify_loop(alg, n);
                let ns = t.elapsed().as_nanos() as f64 / f64::from(n);
                if ok != n {
                    eprintln!("{}: {ok} of {n} checked out", ALGS[alg as usize]);
                    std::process::exit(1);
                }
                ns
            })
            .collect();
        rounds.sort_by(f64::total_cmp);
        per.push(rounds[2]);
    }
    println!("native: ns per token check (median of 5 rounds of {n}), ratio to ES256K");
    for (i, ns) in per.iter().enumerate() {
        println!(
            "{:<10} {:>10.0} ns  x{:.3}  ({} bytes)",
            ALGS[i],
            ns,
            ns / per[0],
            token_len(i as u32)
        );
    }
}
