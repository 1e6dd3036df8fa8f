//! A throttler never puts more than containerConcurrency requests on an instance, whatever the
//! order of arrivals, completions and endpoint changes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

use std::net::SocketAddr;

use activator::throttler::{Limits, Throttler};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Arrive,
    Finish(usize),
    Endpoints(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![4 => Just(Op::Arrive), 3 => (0usize..64).prop_map(Op::Finish), 1 => (0u8..5).prop_map(Op::Endpoints)]
}

proptest! {
    #[test]
    fn never_more_than_cc_per_instance(cc in 1usize..5, ops in proptest::collection::vec(op(), 1..200)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let t = Throttler::new("r", cc, Limits::default());
            let mut leases = Vec::new();
            let mut waiting = Vec::new();
            for op in ops {
                match op {
                    Op::Arrive => {
                        let t2 = t.clone();
                        waiting.push(tokio::spawn(async move { t2.acquire(0).await }));
                    }
                    Op::Finish(i) if !leases.is_empty() => {
                        let i = i % leases.len();
                        leases.swap_remove(i);
                    }
                    Op::Finish(_) => {}
                    Op::Endpoints(n) => {
                        let addrs: Vec<SocketAddr> = (1..=u16::from(n)).map(|p| SocketAddr::from(([127, 0, 0, 1], p))).collect();
                        t.set_endpoints(&addrs);
                    }
                }
                tokio::task::yield_now().await;
                let mut still = Vec::new();
                for w in waiting.drain(..) {
                    if w.is_finished() {
                        leases.push(w.await.unwrap().unwrap());
                    } else {
                        still.push(w);
                    }
                }
                waiting = still;
                for a in leases.iter().map(|l| l.addr) {
                    let n = leases.iter().filter(|l| l.addr == a).count();
                    prop_assert!(n <= cc, "{n} requests on {a} with containerConcurrency {cc}");
                }
            }
            for w in waiting {
                w.abort();
            }
            Ok(())
        })?;
    }
}
