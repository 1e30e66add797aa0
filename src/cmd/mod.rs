//! Subcommands that live outside main.rs.

pub mod admin;
pub mod client;
pub mod fetch;
pub mod kube;
pub mod migrate;
pub mod registry;
pub mod replication;
pub mod webhook;
