//! Native Rust client. Work in progress.
