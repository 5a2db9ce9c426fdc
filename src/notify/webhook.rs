//! Webhooks: a JSON POST of the versioned payload (or a Slack-compatible
//! body), signed with HMAC-SHA256 over `"{timestamp}.{body}"` in the
//! `X-Keywatch-Signature: v1=<hex>` header, with `X-Keywatch-Timestamp` and
//! an idempotency key in `X-Keywatch-Delivery`.

use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use crate::config::{WebhookConfig, WebhookFormat};
use crate::notify::SendError;
use crate::notify::render;
use crate::store::alerts::Delivery;

pub struct WebhookSender {
    http: reqwest::Client,
    url: reqwest::Url,
    format: WebhookFormat,
    secret: Option<SecretString>,
    explorer: String,
}

/// `v1=` + hex HMAC-SHA256 of `"{timestamp}.{body}"` under `secret`.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

impl WebhookSender {
    pub fn new(cfg: &WebhookConfig, explorer: &str) -> Result<WebhookSender, String> {
        crate::rpc::transport::install_crypto_provider();
        // A redirect would re-post the signed body to an address nobody
        // configured: it is not followed.
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(WebhookSender {
            http,
            url: cfg.url.clone(),
            format: cfg.format,
            secret: cfg.secret.clone(),
            explorer: explorer.to_owned(),
        })
    }

    pub async fn send(
        &self,
        ds: &[Delivery],
        batch_id: Option<&str>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), SendError> {
        let body = match self.format {
            WebhookFormat::Keywatch => render::payload(ds, batch_id),
            WebhookFormat::Slack => render::slack(ds, &self.explorer),
        };
        let bytes = serde_json::to_vec(&body).map_err(|e| SendError {
            permanent: true,
            message: e.to_string(),
        })?;
        let ts = now.timestamp();
        let delivery = match (ds, batch_id) {
            ([one], None) => format!("alert-{}", crate::notify::alert_identity(&one.dedup_key)),
            _ => batch_id.unwrap_or("batch").to_owned(),
        };
        let mut req = self
            .http
            .post(self.url.clone())
            .header("content-type", "application/json")
            .header("x-keywatch-timestamp", ts.to_string())
            .header("x-keywatch-delivery", delivery);
        if let Some(secret) = &self.secret {
            req = req.header(
                "x-keywatch-signature",
                signature(secret.expose_secret(), ts, &bytes),
            );
        }
        let shown = crate::rpc::transport::redact_url(&self.url);
        let resp = req.body(bytes).send().await.map_err(|e| SendError {
            permanent: false,
            message: if e.is_timeout() {
                format!("webhook {shown}: timed out")
            } else {
                format!("webhook {shown}: {}", e.without_url())
            },
        })?;
        let status = resp.status().as_u16();
        match status {
            200..=299 => Ok(()),
            408 | 429 | 500..=599 => Err(SendError {
                permanent: false,
                message: format!("webhook {shown}: HTTP {status}"),
            }),
            300..=399 => Err(SendError {
                permanent: true,
                message: format!(
                    "webhook {shown}: HTTP {status}: redirects are not followed (the signed alert would go to another address); set notify.webhook.url to the final address"
                ),
            }),
            _ => Err(SendError {
                permanent: true,
                message: format!("webhook {shown}: HTTP {status}"),
            }),
        }
    }
}
