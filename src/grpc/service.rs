//! `ShouldRateLimit`: descriptors → rules → counter-plane decisions → the Envoy answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
use tonic::{Request, Response, Status};

use super::{LoadedPolicy, RlsStats, RuleStats};
use crate::counter::{Algorithm, CounterError, Window};
use crate::node::ClusterHandle;
use crate::policy::{Match, RateUnit, RuleLimit};

/// The share of a limit past which hits count as `near_limit` (envoyproxy/ratelimit's default).
const NEAR_LIMIT_RATIO: (u64, u64) = (4, 5);

/// The request bounds (from `grpc`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    pub(crate) max_descriptors: usize,
    pub(crate) max_entries: usize,
    /// `http.max_request_n`: the largest hits_addend.
    pub(crate) max_hits: u64,
}

/// The RLS service.
pub(crate) struct Rls {
    pub(crate) node: ClusterHandle,
    pub(crate) policy: Arc<arc_swap::ArcSwap<LoadedPolicy>>,
    pub(crate) stats: Arc<RlsStats>,
    pub(crate) bounds: Bounds,
    pub(crate) response_headers: bool,
}

/// What one descriptor is checked against.
enum Target<'p> {
    None,
    Unlimited,
    Limited {
        key: String,
        name: &'p str,
        requests_per_unit: u32,
        unit: RateUnit,
        window: Window,
        algorithm: Algorithm,
        shadow_mode: bool,
        quota_mode: bool,
        stats: &'p RuleStats,
    },
}

fn bump(counter: &AtomicU64, n: u64) {
    // Relaxed: statistics.
    counter.fetch_add(n, Ordering::Relaxed);
}

fn invalid(path: String, problem: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{path}: {problem}"))
}

impl Rls {
    /// The whole decision; an error is a gRPC status for the whole request (nothing was counted).
    pub(crate) fn decide(&self, request: &RateLimitRequest) -> Result<RateLimitResponse, Status> {
        let b = self.bounds;
        if request.domain.is_empty() {
            return Err(invalid("domain".into(), "must not be empty"));
        }
        if request.descriptors.is_empty() {
            return Err(invalid("descriptors".into(), "must not be empty"));
        }
        if request.descriptors.len() > b.max_descriptors {
            return Err(invalid(
                "descriptors".into(),
                format!(
                    "{} descriptors; at most {} (cluster_config.grpc.max_descriptors)",
                    request.descriptors.len(),
                    b.max_descriptors
                ),
            ));
        }
        let request_hits = u64::from(request.hits_addend);
        let mut hits = Vec::with_capacity(request.descriptors.len());
        for (i, d) in request.descriptors.iter().enumerate() {
            if d.entries.is_empty() {
                return Err(invalid(
                    format!("descriptors[{i}].entries"),
                    "must not be empty",
                ));
            }
            if d.entries.len() > b.max_entries {
                return Err(invalid(
                    format!("descriptors[{i}].entries"),
                    format!(
                        "{} entries; at most {} (cluster_config.grpc.max_entries)",
                        d.entries.len(),
                        b.max_entries
                    ),
                ));
            }
            // The descriptor's own hits_addend overrides the request's; 0 means 1.
            let n = d.hits_addend.as_ref().map_or(request_hits, |v| v.value);
            let n = n.max(1);
            if n > b.max_hits {
                let field = if d.hits_addend.is_some() {
                    format!("descriptors[{i}].hits_addend")
                } else {
                    "hits_addend".to_owned()
                };
                return Err(invalid(
                    field,
                    format!(
                        "{n} is above the per-request ceiling of {} (cluster_config.http.max_request_n)",
                        b.max_hits
                    ),
                ));
            }
            hits.push(n);
        }
        let loaded = self.policy.load();
        let policy = &loaded.policy;
        bump(&self.stats.requests, 1);
        if !policy.has_domain(&request.domain) {
            bump(&self.stats.unknown_domain, 1);
            return Ok(RateLimitResponse {
                overall_code: Code::Ok as i32,
                statuses: request
                    .descriptors
                    .iter()
                    .map(|_| DescriptorStatus {
                        code: Code::Ok as i32,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            });
        }
        // Rules per descriptor, then `replaces`.
        let mut targets: Vec<Target<'_>> = Vec::with_capacity(request.descriptors.len());
        let mut replaced: Vec<&str> = Vec::new();
        let mut names: Vec<Option<&str>> = Vec::with_capacity(request.descriptors.len());
        for (i, d) in request.descriptors.iter().enumerate() {
            let entries: Vec<(&str, &str)> = d
                .entries
                .iter()
                .map(|e| (e.key.as_str(), e.value.as_str()))
                .collect();
            if let Some(o) = &d.limit {
                let Some(unit) = RateUnit::from_proto(o.unit) else {
                    return Err(invalid(
                        format!("descriptors[{i}].limit.unit"),
                        format!("unknown unit {}", o.unit),
                    ));
                };
                let Some(window) = unit.window(crate::counter::Alignment::Calendar) else {
                    return Err(invalid(format!("descriptors[{i}].limit.unit"), "no window"));
                };
                targets.push(Target::Limited {
                    key: crate::policy::counter_key(&request.domain, &entries, &[]),
                    name: "",
                    requests_per_unit: o.requests_per_unit,
                    unit,
                    window,
                    algorithm: Algorithm::FixedWindow,
                    shadow_mode: false,
                    quota_mode: false,
                    stats: &self.stats.overrides,
                });
                names.push(None);
                continue;
            }
            match policy.lookup(&request.domain, &entries) {
                Match::UnknownDomain | Match::NoRule => {
                    targets.push(Target::None);
                    names.push(None);
                }
                Match::Rule { rule, key } => {
                    replaced.extend(rule.replaces.iter().map(String::as_str));
                    names.push(rule.name.as_deref());
                    let stats = &loaded.stats[rule.id];
                    match rule.limit {
                        RuleLimit::Unlimited => {
                            bump(&stats.total_hits, hits[i]);
                            targets.push(Target::Unlimited);
                        }
                        RuleLimit::Limited(l) => targets.push(Target::Limited {
                            key,
                            name: rule.name.as_deref().unwrap_or(""),
                            requests_per_unit: l.requests_per_unit,
                            unit: l.unit,
                            window: l.window,
                            algorithm: l.algorithm,
                            shadow_mode: rule.shadow_mode,
                            quota_mode: rule.quota_mode,
                            stats,
                        }),
                    }
                }
            }
        }
        for (target, name) in targets.iter_mut().zip(&names) {
            if let Some(name) = name
                && replaced.contains(name)
                && matches!(target, Target::Limited { .. })
            {
                *target = Target::None;
            }
        }
        let key_error = |i: usize, e: CounterError| match e {
            CounterError::KeyLimit { .. } | CounterError::RemoteKeyLimit { .. } => {
                Status::resource_exhausted(format!(
                    "descriptors[{i}]: {e} (cluster_config.limits.max_keys)"
                ))
            }
            e => invalid(format!("descriptors[{i}].entries"), e),
        };
        // Every counter handle first when several descriptors count: one refused here (a key too long, a full
        // store) refuses the request before anything is counted. A single one needs no handle: it is decided by
        // key through the per-thread cache of resolved cells, and a refusal there has counted nothing either.
        let limited = targets
            .iter()
            .filter(|t| matches!(t, Target::Limited { .. }))
            .count();
        let mut handles = Vec::with_capacity(targets.len());
        for (i, target) in targets.iter().enumerate() {
            handles.push(match target {
                Target::Limited { key, window, .. } if limited > 1 => Some(
                    self.node
                        .store()
                        .handle(key, *window)
                        .map_err(|e| key_error(i, e))?,
                ),
                _ => None,
            });
        }
        let now_ms = self.node.clock().now_unix_ms().get();
        let mut statuses = Vec::with_capacity(targets.len());
        let (mut failed, mut quota_total, mut quota_failed) = (0usize, 0usize, 0usize);
        // (remaining, limit, reset seconds) of the descriptor the headers describe.
        let mut closest: Option<(u32, u32, u64, bool)> = None;
        // The earliest retry after which every over-limit descriptor admits again (`Retry-After`).
        let mut retry_after_s: Option<u64> = None;
        for ((i, target), handle) in targets.into_iter().enumerate().zip(handles) {
            let n = hits[i];
            match target {
                Target::None => statuses.push(DescriptorStatus {
                    code: Code::Ok as i32,
                    ..Default::default()
                }),
                Target::Unlimited => statuses.push(DescriptorStatus {
                    code: Code::Ok as i32,
                    limit_remaining: u32::MAX,
                    ..Default::default()
                }),
                Target::Limited {
                    name,
                    key,
                    window,
                    requests_per_unit,
                    unit,
                    algorithm,
                    shadow_mode,
                    quota_mode,
                    stats,
                    ..
                } => {
                    let limit = u64::from(requests_per_unit);
                    let decision = match handle {
                        Some(handle) => handle.acquire(algorithm, limit, n),
                        None => self
                            .node
                            .store()
                            .acquire_by_key(&key, window, algorithm, limit, n)
                            .map_err(|e| key_error(i, e))?,
                    };
                    bump(&stats.total_hits, n);
                    // A token bucket's `used` is counted against its burst (its decision's limit).
                    let base = match algorithm {
                        Algorithm::TokenBucket { .. } => decision.limit,
                        Algorithm::FixedWindow | Algorithm::SlidingWindow => limit,
                    };
                    let near = base * NEAR_LIMIT_RATIO.0 / NEAR_LIMIT_RATIO.1;
                    let mut code = Code::Ok;
                    if decision.allowed {
                        bump(&stats.within_limit, n);
                        let after = decision.used;
                        let before = after.saturating_sub(n);
                        if after > near {
                            bump(&stats.near_limit, after - near.max(before));
                        }
                    } else {
                        bump(&stats.over_limit, n);
                        if shadow_mode {
                            bump(&stats.shadow_mode, n);
                        } else {
                            code = Code::OverLimit;
                        }
                    }
                    if quota_mode {
                        quota_total += 1;
                        if code == Code::OverLimit {
                            quota_failed += 1;
                        }
                    } else if code == Code::OverLimit {
                        failed += 1;
                    }
                    let until_ms = decision.reset_at_ms.saturating_sub(now_ms);
                    let remaining = if decision.allowed {
                        u32::try_from(decision.remaining).unwrap_or(u32::MAX)
                    } else {
                        0
                    };
                    let reset_s = until_ms.div_ceil(1000);
                    let over = code == Code::OverLimit && !quota_mode;
                    if over {
                        // Every over-limit descriptor must admit again: the latest earliest retry.
                        let retry_s = decision.retry_at_ms.saturating_sub(now_ms).div_ceil(1000);
                        retry_after_s =
                            Some(retry_after_s.map_or(retry_s, |r: u64| r.max(retry_s)));
                    }
                    let better = match closest {
                        None => true,
                        Some((r, _, _, o)) => (over && !o) || (over == o && remaining < r),
                    };
                    if better {
                        closest = Some((remaining, requests_per_unit, reset_s, over));
                    }
                    statuses.push(DescriptorStatus {
                        code: code as i32,
                        current_limit: Some(RateLimit {
                            name: name.to_owned(),
                            requests_per_unit,
                            unit: unit.proto_number(),
                        }),
                        limit_remaining: remaining,
                        duration_until_reset: Some(ProtoDuration {
                            seconds: i64::try_from(until_ms / 1000).unwrap_or(i64::MAX),
                            nanos: i32::try_from((until_ms % 1000) * 1_000_000).unwrap_or(0),
                        }),
                        quota: None,
                    });
                }
            }
        }
        let over = failed > 0 || (quota_total > 0 && quota_total == quota_failed);
        bump(
            if over {
                &self.stats.over_limit
            } else {
                &self.stats.ok
            },
            1,
        );
        let mut response_headers_to_add = Vec::new();
        if self.response_headers
            && let Some((remaining, limit, reset_s, _)) = closest
        {
            let header = |key: &str, value: String| HeaderValue {
                key: key.to_owned(),
                value,
                raw_value: Vec::new(),
            };
            response_headers_to_add.push(header("RateLimit-Limit", limit.to_string()));
            response_headers_to_add.push(header("RateLimit-Remaining", remaining.to_string()));
            response_headers_to_add.push(header("RateLimit-Reset", reset_s.to_string()));
            if over {
                let retry_s = retry_after_s.unwrap_or(reset_s);
                response_headers_to_add.push(header("Retry-After", retry_s.to_string()));
            }
        }
        Ok(RateLimitResponse {
            overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
            statuses,
            response_headers_to_add,
            ..Default::default()
        })
    }
}

#[tonic::async_trait]
impl RateLimitService for Rls {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let answer = self.decide(request.get_ref());
        if answer.is_err() {
            bump(&self.stats.invalid, 1);
        }
        answer.map(Response::new)
    }
}
