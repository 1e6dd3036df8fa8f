//! Autoscaler benchmark: one decision tick over many revisions, stat intake from one instance
//! per revision per second, and the time from a poke to its decision.

use std::time::{Duration, Instant};

use autoscaler::collector::Source;
use autoscaler::{Autoscaler, RevisionKey};
use serving_api::config::AutoscalerConfig;
use wire::Stat;

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((p / 100.0) * (v.len() - 1) as f64).round() as usize]
}

pub fn run(revisions: usize) -> anyhow::Result<()> {
    let cfg = AutoscalerConfig::default();
    let scaling = serving_api::autoscaling::resolve(&Default::default(), 0, &cfg, "")
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut a = Autoscaler::new(&cfg);
    let keys: Vec<RevisionKey> = (0..revisions)
        .map(|i| RevisionKey::new("bench", &format!("rev-{i:05}")))
        .collect();
    for k in &keys {
        a.upsert(k.clone(), scaling.clone(), Duration::ZERO, 1);
    }
    let stats: Vec<Stat> = (0..revisions)
        .map(|i| Stat {
            pod_name: format!("rev-{i:05}-pod"),
            average_concurrency: (i % 200) as f64,
            request_count: 10.0,
            window: 1.0,
            ..Stat::default()
        })
        .collect();

    // Fill a full stable window (60 s) of history, one stat per revision per second, timing
    // the intake of each second's batch.
    let mut intake = Vec::new();
    for sec in 1..=60u64 {
        let now = Duration::from_secs(sec);
        // Reports arrive as JSON (wire::Stat); decoding is part of the intake.
        let payloads: Vec<Vec<u8>> = stats
            .iter()
            .map(|s| {
                Stat {
                    seq: sec,
                    ..s.clone()
                }
                .to_json()
            })
            .collect();
        let started = Instant::now();
        for (k, p) in keys.iter().zip(&payloads) {
            let s = Stat::from_json(p)?;
            a.record(k, now, &s, Source::QueueProxy);
        }
        intake.push(started.elapsed().as_secs_f64());
    }
    let mut ticks = Vec::new();
    for i in 0..10u64 {
        let started = Instant::now();
        let decisions = a.tick(Duration::from_secs(60 + 2 * i));
        ticks.push(started.elapsed().as_secs_f64());
        anyhow::ensure!(decisions.len() == revisions);
    }
    let mut pokes = Vec::new();
    for (i, k) in keys.iter().enumerate().take(1000) {
        let now = Duration::from_secs(90) + Duration::from_millis(i as u64);
        let started = Instant::now();
        let d = a.poke(k, now, 1.0);
        pokes.push(started.elapsed().as_secs_f64());
        anyhow::ensure!(d.is_some_and(|d| d.desired >= 1));
    }

    let intake_share = percentile(&mut intake.clone(), 50.0) * 100.0;
    println!(
        "autoscaler benchmark: {revisions} revisions, one instance each, 60 s of history, one thread"
    );
    println!();
    println!("| measure | p50 | p99 | target |");
    println!("|---|---|---|---|");
    println!(
        "| decision tick over all revisions | {:.2} ms | {:.2} ms | ≤ 20 ms |",
        percentile(&mut ticks.clone(), 50.0) * 1e3,
        percentile(&mut ticks, 99.0) * 1e3
    );
    println!(
        "| intake (JSON decode + record) of one stat per revision, 1 s of reports | {:.2} ms ({intake_share:.2}% of a core) | {:.2} ms | ≤ 5% of a core |",
        percentile(&mut intake.clone(), 50.0) * 1e3,
        percentile(&mut intake, 99.0) * 1e3
    );
    println!(
        "| poke → decision | {:.1} µs | {:.1} µs | ≤ 1 ms |",
        percentile(&mut pokes.clone(), 50.0) * 1e6,
        percentile(&mut pokes, 99.0) * 1e6
    );
    Ok(())
}
