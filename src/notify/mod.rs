//! Delivery channels (adapters): email through lettre's SMTP transport and
//! signed JSON webhooks. Each send is classified as delivered, a transient
//! failure (retry later) or a permanent one (give up).

pub mod email;
pub mod render;
pub mod webhook;

/// Why a send failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    /// SMTP 5xx, webhook 4xx: trying again will not help.
    pub permanent: bool,
    pub message: String,
}
