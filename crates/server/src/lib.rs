//! Switchboard server: a real-time messaging hub behind a WebSocket and HTTP
//! gateway. See `docs/ARCHITECTURE.md` for how the modules fit together.

pub mod auth;
pub mod cluster;
pub mod config;
pub mod expiring;
pub mod gateway;
pub mod hub;
pub mod memory;
pub mod metrics;
pub mod pipeline;
pub mod service;
pub mod store;

pub use config::Config;
pub use gateway::Server;
