//! Switchyard: a Pingora-based sidecar proxy for outbound LLM traffic.
//!
//! The request's walk, one module a step: `proxy` (accept, read, forward, stream back),
//! `route` (which upstream), `rewrite` (model and credentials), `upstream` (DNS, peers);
//! around it `config`/`policy` (the YAML, compiled), `reload`, `telemetry`, `admin`,
//! `shutdown`, and `mock` (the bundled fake provider).

pub mod admin;
pub mod collector;
pub mod config;
pub mod error;
pub mod events;
pub mod governance;
pub mod mock;
pub mod policy;
pub mod price;
pub mod provider;
pub mod proxy;
pub mod reload;
pub mod rewrite;
pub mod route;
pub mod server;
pub mod shutdown;
pub mod sse;
pub mod state;
pub mod telemetry;
pub mod upstream;
pub mod usage;
pub mod whatif;
