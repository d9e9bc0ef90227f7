//! The operator's admin API (PROTOCOL.md §9) and the OAuth2 token endpoint (§1), as
//! sans-IO request handlers: method, path, headers and body in; status, headers, JSON
//! body and the effect the relay must apply out.
#![forbid(unsafe_code)]

mod admin_token;
mod api;
mod audit;
mod body;
mod error;
mod presence;
mod response;
mod route;
mod token_endpoint;

pub use admin_token::AdminToken;
pub use api::AdminApi;
pub use audit::AdminAudit;
pub use body::MAX_ADMIN_BODY;
pub use error::AdminError;
pub use presence::{DevicePresence, NoPresence, Presence};
pub use response::{AdminEffect, AdminResponse};
pub use token_endpoint::{TokenEndpoint, TokenRequest, TokenResponse};
