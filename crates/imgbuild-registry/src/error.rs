//! The typed errors of the registry client.
//!
//! Every variant names the registry and, where there is one, the repository and the blob or
//! manifest involved, so that a failed `imgbuild push` or pull says *what* failed *where*.
//! No variant carries a password, an identity token or a bearer token: credentials are held in
//! [`crate::Secret`], which has no `Display` and a redacted `Debug`, and messages from the
//! network (registry error bodies, transport errors) never contain request headers.

use std::path::PathBuf;

use imgbuild_store::{Digest, StoreError};

/// Errors of pushing, pulling and logging in.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid image reference `{input}`: {reason}")]
    InvalidReference { input: String, reason: String },

    /// Credentials were sent and the registry (or its token server) refused them.
    #[error(
        "authentication to {registry} failed for {user}: check credentials (docker login / imgbuild login)"
    )]
    AuthFailed { registry: String, user: String },

    /// The registry wants credentials and none were found for it.
    #[error(
        "authentication required by {registry} for {what}: no credentials found for {registry} \
         (run `imgbuild login {registry}` or `docker login {registry}`, or set IMGBUILD_REGISTRY_USER/IMGBUILD_REGISTRY_PASSWORD)"
    )]
    AuthRequired { registry: String, what: String },

    /// Authenticated, but not allowed (DENIED, 403, or a token without the needed scope).
    #[error("access to {what} on {registry} denied{}: {message}", user.as_ref().map(|u| format!(" for {u}")).unwrap_or_default())]
    Denied {
        registry: String,
        what: String,
        user: Option<String>,
        message: String,
    },

    #[error(
        "repository {repository} not found on {registry} (NAME_UNKNOWN): check the name and that it exists"
    )]
    RepositoryUnknown {
        registry: String,
        repository: String,
    },

    #[error("manifest {reference} not found in {registry}/{repository}: check the tag or digest")]
    ManifestUnknown {
        registry: String,
        repository: String,
        reference: String,
    },

    #[error("blob {digest} not found in {registry}/{repository}")]
    BlobUnknown {
        registry: String,
        repository: String,
        digest: Digest,
    },

    /// Content served by the registry does not match the digest it was asked for.
    #[error(
        "{what} served by {registry}/{repository} does not match its digest: expected {expected}, got {actual}; nothing was stored"
    )]
    DigestMismatch {
        registry: String,
        repository: String,
        what: String,
        expected: String,
        actual: String,
    },

    #[error(
        "size of {what} served by {registry}/{repository} does not match: expected {expected} bytes, got {actual}; nothing was stored"
    )]
    SizeMismatch {
        registry: String,
        repository: String,
        what: String,
        expected: u64,
        actual: u64,
    },

    /// A blob in the local store does not match its name: it was removed from the store.
    #[error(
        "local blob {digest} (to push to {registry}/{repository}) is corrupt and was removed from the store: rebuild the image"
    )]
    LocalBlobCorrupt {
        registry: String,
        repository: String,
        digest: Digest,
    },

    #[error(
        "local blob {digest} needed for {registry}/{repository} is missing from the store: rebuild the image"
    )]
    LocalBlobMissing {
        registry: String,
        repository: String,
        digest: Digest,
    },

    /// An answer the client did not expect (after retries, if it was a retryable one).
    #[error("{registry}: {what} answered HTTP {status}{}{}", if message.is_empty() { "" } else { ": " }, message)]
    Http {
        registry: String,
        what: String,
        status: u16,
        message: String,
    },

    /// A transient failure (connection, 408, 429, 5xx) went on for the whole retry
    /// budget ([`crate::RetryPolicy::timeout`]); `last` is the last failure.
    #[error(
        "{last} (gave up after {attempts} attempts over {seconds:.0} s; the retry budget is {budget_seconds} s: \
         raise it with IMGBUILD_RETRY_TIMEOUT=SECONDS or `[registry] retry_timeout` in imgbuild.toml)"
    )]
    RetriesExhausted {
        attempts: u32,
        seconds: f64,
        budget_seconds: u64,
        last: Box<RegistryError>,
    },

    /// The connection failed (after retries).
    #[error("{registry}: {what} failed: {message}")]
    Transport {
        registry: String,
        what: String,
        message: String,
    },

    #[error("{registry}: {what}: {message}")]
    Protocol {
        registry: String,
        what: String,
        message: String,
    },

    #[error("{registry}/{repository}: {what}")]
    Unsupported {
        registry: String,
        repository: String,
        what: String,
    },

    #[error(
        "registry {registry} must be reached over plain HTTP, which is allowed only for loopback addresses or registries listed as insecure"
    )]
    InsecureNotAllowed { registry: String },

    /// A `certs.d` CA file that cannot be used.
    #[error("CA certificate `{}` for {registry}: {message}", path.display())]
    CaCertificate {
        registry: String,
        path: PathBuf,
        message: String,
    },

    #[error("invalid push input for {repository}: {message}")]
    InvalidInput { repository: String, message: String },

    #[error("credential helper `{helper}` failed for {registry}: {message}")]
    CredentialHelper {
        helper: String,
        registry: String,
        message: String,
    },

    #[error("auth config `{}`: {message}", path.display())]
    AuthConfig { path: PathBuf, message: String },

    #[error("{op} `{}`: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;
