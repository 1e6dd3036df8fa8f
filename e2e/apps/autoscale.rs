//! Like Knative's autoscale test image: each request may sleep (`?sleep=MS`), compute primes
//! below N (`?prime=N`) and hold memory (`?bloat=MB`), so tests can shape load.

mod common;

fn primes_below(n: u64) -> u64 {
    let mut count = 0;
    'outer: for i in 2..n {
        let mut d = 2;
        while d * d <= i {
            if i % d == 0 {
                continue 'outer;
            }
            d += 1;
        }
        count += 1;
    }
    count
}

fn main() {
    common::serve("autoscale", |req| async move {
        let num = |k: &str| common::query(&req, k).and_then(|v| v.parse::<u64>().ok());
        let mut out = Vec::new();
        if let Some(ms) = num("sleep") {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            out.push(format!("Slept for {ms} milliseconds."));
        }
        if let Some(n) = num("prime") {
            let count = primes_below(n);
            out.push(format!("The number of primes below {n} is {count}."));
        }
        if let Some(mb) = num("bloat") {
            let held = vec![1u8; (mb as usize) << 20];
            out.push(format!("Allocated {} MB.", held.len() >> 20));
        }
        common::text(200, out.join("\n") + "\n")
    });
}
