//! Load generation for one case over one or two endpoints.
//!
//! - **Closed loop** (`Load::Closed { concurrency }`): each side keeps `concurrency` requests
//!   in flight, sending the next as one finishes. In an A/B run both sides run at once, each
//!   with its own loop over the same prompts in the same order, so request `i` of A and of B
//!   go out at about the same time with the same text (only the nonce differs): the sides
//!   are measured over one time window, and slow drift of the client or network hits both.
//! - **Alternating closed loop** (`Load::Alternate { concurrency }`): for A/B runs whose sides
//!   share hardware (or a link), where requests sent together would slow each other: one
//!   queue A0, B0, A1, B1, ... and `concurrency` requests in flight over both sides. At 1 the
//!   sides take turns and never overlap; request `i` of A and of B still go out one request
//!   apart, so slow drift hits both alike.
//! - **Open loop** (`Load::Open { rate_rps }`): Poisson arrivals. All send times are drawn
//!   before the case starts (seeded) and every request is scheduled at its time regardless of
//!   how earlier ones are doing, so a slow server shows up as queueing (TTFT) instead of
//!   silently lowering the offered load. Both sides get the same schedule.
//!
//! Both stop scheduling at `requests` per side or when `max_duration` has passed; requests in
//! flight then finish (each bounded by its own timeout).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ctxcost_core::endpoint::{Load, RequestLog};
use ctxcost_core::inputs::splitmix64;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::client::{send, Endpoint, RequestLimits};

/// One case's load.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub load: Load,
    /// Requests per side.
    pub requests: usize,
    /// Stop scheduling after this long.
    pub max_duration: Duration,
    pub limits: RequestLimits,
    /// Seed of the arrival times.
    pub seed: u64,
}

/// Poisson arrival offsets (s) for `n` requests at `rate` per second, seeded.
pub fn poisson_schedule(n: usize, rate: f64, seed: u64) -> Vec<f64> {
    let mut t = 0.0;
    (0..n)
        .map(|i| {
            let at = t;
            // Uniform in (0, 1] from 53 bits, then an exponential gap.
            let u = ((splitmix64(seed ^ 0xA11 ^ (i as u64).wrapping_mul(0x9E37_79B9)) >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
            t += -u.ln() / rate;
            at
        })
        .collect()
}

/// Progress: requests finished so far (all sides).
pub type Progress = Arc<AtomicUsize>;

/// What every request task of a case shares.
#[derive(Clone)]
struct Requests {
    t0: Instant,
    limits: RequestLimits,
    progress: Progress,
}

impl Requests {
    /// Send request `i` as a task, meant for `at` (it waits until then if that is later); the
    /// closed loop's permit, if any, is held until the request ends.
    fn spawn(&self, ep: &Arc<Endpoint>, body: &Arc<Vec<u8>>, i: usize, at: Instant, permit: Option<OwnedSemaphorePermit>) -> JoinHandle<RequestLog> {
        let (this, ep, body) = (self.clone(), ep.clone(), body.clone());
        tokio::spawn(async move {
            if at > Instant::now() {
                tokio::time::sleep_until(at).await;
            }
            let log = send(ep, body, i, this.t0, at, this.limits).await;
            drop(permit);
            this.progress.fetch_add(1, Ordering::Relaxed);
            log
        })
    }
}

/// Run one case. `bodies[side][i]` is the JSON body of request `i` of that side. Returns the
/// logs per side, ordered by request index.
pub async fn run_case(sides: &[Arc<Endpoint>], bodies: Vec<Vec<Arc<Vec<u8>>>>, spec: &LoadSpec, progress: Progress) -> Vec<Vec<RequestLog>> {
    let n = spec.requests.min(bodies.iter().map(Vec::len).min().unwrap_or(0));
    let t0 = Instant::now();
    let stop_at = t0 + spec.max_duration;
    let req = Requests { t0, limits: spec.limits, progress };
    let mut handles: Vec<(usize, JoinHandle<RequestLog>)> = Vec::new();
    match spec.load {
        Load::Closed { concurrency } => {
            // One dispatcher per side, all running at once: each side keeps its own
            // `concurrency` requests in flight over the same prompt order.
            let mut dispatchers = Vec::new();
            for (s, ep) in sides.iter().enumerate() {
                let (ep, side_bodies, req) = (ep.clone(), bodies[s].clone(), req.clone());
                dispatchers.push(tokio::spawn(async move {
                    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
                    let mut hs = Vec::new();
                    for (i, body) in side_bodies.iter().enumerate().take(n) {
                        let permit = sem.clone().acquire_owned().await.expect("semaphore open");
                        let now = Instant::now();
                        if now >= stop_at {
                            break;
                        }
                        hs.push(req.spawn(&ep, body, i, now, Some(permit)));
                    }
                    hs
                }));
            }
            for (s, d) in dispatchers.into_iter().enumerate() {
                for h in d.await.expect("dispatcher task") {
                    handles.push((s, h));
                }
            }
        }
        Load::Alternate { concurrency } => {
            let sem = Arc::new(Semaphore::new(concurrency.max(1)));
            'queue: for i in 0..n {
                for (s, ep) in sides.iter().enumerate() {
                    let permit = sem.clone().acquire_owned().await.expect("semaphore open");
                    let now = Instant::now();
                    if now >= stop_at {
                        break 'queue;
                    }
                    handles.push((s, req.spawn(ep, &bodies[s][i], i, now, Some(permit))));
                }
            }
        }
        Load::Open { rate_rps } => {
            let offsets = poisson_schedule(n, rate_rps, spec.seed);
            for (i, off) in offsets.into_iter().enumerate() {
                let at = t0 + Duration::from_secs_f64(off);
                if at >= stop_at {
                    break;
                }
                for (s, ep) in sides.iter().enumerate() {
                    handles.push((s, req.spawn(ep, &bodies[s][i], i, at, None)));
                }
            }
        }
    }
    let mut out: Vec<Vec<RequestLog>> = sides.iter().map(|_| Vec::new()).collect();
    for (s, h) in handles {
        match h.await {
            Ok(log) => out[s].push(log),
            Err(e) => panic!("request task failed: {e}"),
        }
    }
    for v in &mut out {
        v.sort_by_key(|r| r.index);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_schedule_has_the_asked_rate_and_is_seeded() {
        let s = poisson_schedule(4000, 5.0, 1);
        assert_eq!(s[0], 0.0);
        assert!(s.windows(2).all(|w| w[1] > w[0]));
        let rate = (s.len() - 1) as f64 / s[s.len() - 1];
        assert!((rate - 5.0).abs() < 0.25, "rate {rate}");
        // Exponential gaps: coefficient of variation ~1 (a fixed-interval schedule has 0).
        let gaps: Vec<f64> = s.windows(2).map(|w| w[1] - w[0]).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let sd = (gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64).sqrt();
        assert!((sd / mean - 1.0).abs() < 0.1, "cv {}", sd / mean);
        assert_eq!(s, poisson_schedule(4000, 5.0, 1));
        assert_ne!(s, poisson_schedule(4000, 5.0, 2));
    }
}
