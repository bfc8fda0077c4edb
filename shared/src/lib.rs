//! Shared API types and metrics.
