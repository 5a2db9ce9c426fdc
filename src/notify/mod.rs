//! Delivery channels (adapters): email through lettre's SMTP transport and
//! signed JSON webhooks. Each send is classified as delivered, a transient
//! failure (retry later) or a permanent one (give up).

pub mod email;
pub mod inbox;
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

use crate::config::Settings;
use crate::store::alerts::Delivery;

/// The configured channels, for the dispatcher and for alerts keywatch
/// sends about itself straight away (the database may be what is down).
pub struct Channels {
    pub email: Option<email::EmailSender>,
    pub webhook: Option<webhook::WebhookSender>,
}

impl Channels {
    pub fn from_settings(settings: &Settings) -> Result<Channels, String> {
        let n = &settings.notify;
        Ok(Channels {
            email: n
                .email
                .as_ref()
                .map(|e| email::EmailSender::new(e, &n.explorer_url))
                .transpose()?,
            webhook: n
                .webhook
                .as_ref()
                .map(|w| webhook::WebhookSender::new(w, &n.explorer_url))
                .transpose()?,
        })
    }

    /// The configured channels' names, in a fixed order.
    pub fn names(&self) -> Vec<&'static str> {
        let mut out = vec![];
        if self.email.is_some() {
            out.push("email");
        }
        if self.webhook.is_some() {
            out.push("webhook");
        }
        out
    }

    /// Sends `ds` (one alert, or a batch under `batch_id`) on `channel`.
    pub async fn send(
        &self,
        channel: &str,
        ds: &[Delivery],
        batch_id: Option<&str>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), SendError> {
        let missing = |what: &str| SendError {
            permanent: false,
            message: format!("{what} is not configured in this process"),
        };
        match channel {
            "email" => match &self.email {
                Some(e) => e.send(ds, batch_id).await,
                None => Err(missing("email")),
            },
            "webhook" => match &self.webhook {
                Some(w) => w.send(ds, batch_id, now).await,
                None => Err(missing("the webhook")),
            },
            other => Err(SendError {
                permanent: true,
                message: format!("unknown channel {other:?}"),
            }),
        }
    }
}

/// The identity of an alert on the wire (Message-ID, webhook delivery key):
/// a hash of its dedup key, so the same alert sent twice (a retry, a copy
/// sent from memory while the database was down, one re-created after a
/// failover) is recognisably one alert.
pub fn alert_identity(dedup_key: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(dedup_key.as_bytes());
    hex::encode(&digest[..16])
}
