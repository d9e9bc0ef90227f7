//! Authentication and authorisation: client secrets, client-credential checks, JWT access
//! and device tokens, scopes and tsn matching. Sans-IO: time and randomness come in.
#![forbid(unsafe_code)]

mod cache;
mod client_cert;
mod client_login;
mod credentials;
mod error;
pub(crate) mod scope;
mod secrets;
mod tokens;
mod tsn;

pub use cache::{CredentialCache, DEFAULT_CREDENTIAL_TTL};
pub use client_cert::identify_device;
pub use client_login::{
    basic_allowed, BasicAuth, ClientLogin, LoginAttempts, LoginDomain, LoginError, LoginThrottled,
    PresentedCredentials, UPGRADE_CHALLENGE,
};
pub use credentials::{find_client_caught_up, new_client_credentials, verify_client};
pub use error::AuthError;
pub use scope::{devices_in_scope, resolve_device, Principal, ScopeError};
pub use secrets::{
    generate_client_id, generate_client_secret, ClientSecret, HashCost, SecretHasher,
};
pub use tokens::{
    AccessClaims, DeviceClaims, IssuedToken, SigningKey, TokenIssuer, ACCESS_AUDIENCE,
    DEFAULT_ACCESS_TTL, DEVICE_AUDIENCE, DEVICE_TOKEN_TTL, ISSUER,
};
pub use tsn::TsnInput;
