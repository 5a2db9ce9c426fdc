//! Injected faults, reproducible from a seed: whether request n is hit, and
//! by what, depends only on the seed, n and the method, never on timing.

use std::time::Duration;

use serde::Deserialize;

use crate::sim::chain::derive_bytes;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum FaultKind {
    /// HTTP 429 with `Retry-After: secs` and a plain-text body.
    RateLimit { retry_after: u64 },
    /// HTTP 502 with an HTML body.
    BadGateway,
    /// HTTP 503 with an HTML body.
    Unavailable,
    /// The real response cut off halfway.
    Truncated,
    /// HTTP 200 with a body that is not JSON.
    Malformed,
    /// The real response, after this delay (e.g. longer than the client timeout).
    Slow { millis: u64 },
    /// The connection closes without a complete response.
    Drop,
    /// A JSON-RPC INTERNAL_ERROR (HTTP 500 on current nodes).
    Internal,
    /// A JSON-RPC TIMEOUT_ERROR (HTTP 408 on current nodes).
    Timeout,
}

/// One rule. (`kind` and its fields are flattened in, which serde cannot
/// combine with `deny_unknown_fields`.)
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct FaultRule {
    /// Only requests for this JSON-RPC method (all when absent).
    #[serde(default)]
    pub method: Option<String>,
    #[serde(flatten)]
    pub kind: FaultKind,
    /// Chance that a matching request is hit.
    #[serde(default)]
    pub probability: Option<f64>,
    /// Or: which matching requests are hit (0-based among the matching ones).
    #[serde(default)]
    pub requests: Vec<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultPlan {
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub rules: Vec<FaultRule>,
    /// Every response waits a uniformly drawn time in [min, max] ms.
    #[serde(default)]
    pub latency_ms: Option<(u64, u64)>,
}

/// What to do with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub fault: Option<FaultKind>,
    pub latency: Duration,
}

/// Counts requests per rule so schedules can name the nth matching request.
#[derive(Debug, Default)]
pub struct FaultState {
    pub plan: FaultPlan,
    seen: Vec<u64>,
    pub requests: u64,
}

fn unit(seed: u64, n: u64, salt: u64) -> f64 {
    let b = derive_bytes(seed ^ salt.wrapping_mul(0xA24B_AED4_963E_E407), b'F', n);
    (u64::from_le_bytes(b[..8].try_into().expect("8 bytes")) >> 11) as f64 / (1u64 << 53) as f64
}

impl FaultState {
    pub fn new(plan: FaultPlan) -> FaultState {
        FaultState {
            seen: vec![0; plan.rules.len()],
            plan,
            requests: 0,
        }
    }

    /// Decides request number `self.requests` for `method`.
    pub fn decide(&mut self, method: &str) -> Decision {
        let n = self.requests;
        self.requests += 1;
        let seed = self.plan.seed;
        let latency = match self.plan.latency_ms {
            Some((lo, hi)) if hi > lo => {
                Duration::from_millis(lo + ((hi - lo + 1) as f64 * unit(seed, n, 0)) as u64)
            }
            Some((lo, _)) => Duration::from_millis(lo),
            None => Duration::ZERO,
        };
        let mut fault = None;
        for (i, rule) in self.plan.rules.iter().enumerate() {
            if rule.method.as_deref().is_some_and(|m| m != method) {
                continue;
            }
            let nth = self.seen[i];
            self.seen[i] += 1;
            let hit = rule.requests.contains(&nth)
                || rule
                    .probability
                    .is_some_and(|p| unit(seed, n, i as u64 + 1) < p);
            if hit && fault.is_none() {
                fault = Some(rule.kind.clone());
            }
        }
        Decision { fault, latency }
    }
}
