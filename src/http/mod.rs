//! HTTP surface: `/health`, `/ready`, `/cluster/status`, `/metrics` and the rate-limit API. Filled by the node
//! binary issue.
