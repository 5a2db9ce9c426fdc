//! Email through lettre's async SMTP transport: plain (loopback), STARTTLS
//! or implicit TLS, with optional authentication. The Message-ID is derived
//! from the alert's dedup key (or the batch id), so a duplicate delivery is
//! recognisable.

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;

use crate::config::{EmailConfig, Severity, SmtpTls};
use crate::notify::SendError;
use crate::notify::render;
use crate::store::alerts::Delivery;

#[derive(Clone)]
pub struct EmailSender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
    to_by_severity: std::collections::BTreeMap<Severity, Vec<Mailbox>>,
    explorer: String,
    hostname: String,
}

impl EmailSender {
    pub fn new(cfg: &EmailConfig, explorer: &str) -> Result<EmailSender, String> {
        crate::rpc::transport::install_crypto_provider();
        let builder = match cfg.tls {
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&cfg.host),
            SmtpTls::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&cfg.host)
                .map_err(|e| format!("smtp host {:?}: {e}", cfg.host))?,
            SmtpTls::Implicit => AsyncSmtpTransport::<Tokio1Executor>::relay(&cfg.host)
                .map_err(|e| format!("smtp host {:?}: {e}", cfg.host))?,
        };
        let mut builder = builder.port(cfg.port).timeout(Some(cfg.timeout));
        if let (Some(pem), true) = (&cfg.ca_pem, cfg.tls != SmtpTls::None) {
            let cert =
                Certificate::from_pem(pem).map_err(|e| format!("notify.email.ca_file: {e}"))?;
            let params = TlsParameters::builder(cfg.host.clone())
                .add_root_certificate(cert)
                .build_rustls()
                .map_err(|e| format!("smtp tls for {:?}: {e}", cfg.host))?;
            builder = builder.tls(if cfg.tls == SmtpTls::StartTls {
                Tls::Required(params)
            } else {
                Tls::Wrapper(params)
            });
        }
        if let (Some(user), Some(pass)) = (&cfg.username, &cfg.password) {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                pass.expose_secret().to_owned(),
            ));
        }
        let hostname = cfg.from.email.domain().to_owned();
        Ok(EmailSender {
            transport: builder.build(),
            from: cfg.from.clone(),
            to: cfg.to.clone(),
            to_by_severity: cfg.to_by_severity.clone(),
            explorer: explorer.to_owned(),
            hostname,
        })
    }

    fn recipients(&self, ds: &[Delivery]) -> Vec<Mailbox> {
        let mut out = self.to.clone();
        for d in ds {
            let sev = Severity::parse(&d.severity).unwrap_or(Severity::Critical);
            for m in self.to_by_severity.get(&sev).into_iter().flatten() {
                if !out.contains(m) {
                    out.push(m.clone());
                }
            }
        }
        out
    }

    /// One alert, or a batch of them, as one message.
    pub fn message(&self, ds: &[Delivery], batch_id: Option<&str>) -> Result<Message, SendError> {
        let (subject, id) = match (ds, batch_id) {
            ([one], None) => (
                render::subject(one),
                format!(
                    "<keywatch-alert-{}@{}>",
                    crate::notify::alert_identity(&one.dedup_key),
                    self.hostname
                ),
            ),
            _ => (
                render::batch_subject(ds),
                format!(
                    "<keywatch-{}@{}>",
                    batch_id.unwrap_or("batch"),
                    self.hostname
                ),
            ),
        };
        let mut b = Message::builder()
            .from(self.from.clone())
            .subject(subject)
            .message_id(Some(id));
        let to = self.recipients(ds);
        if to.is_empty() {
            return Err(SendError {
                permanent: true,
                message: "no recipients for this severity".into(),
            });
        }
        for m in to {
            b = b.to(m);
        }
        b.multipart(MultiPart::alternative_plain_html(
            render::text(ds, &self.explorer),
            render::html(ds, &self.explorer),
        ))
        .map_err(|e| SendError {
            permanent: true,
            message: format!("cannot build the message: {e}"),
        })
    }

    /// Hands a message to the SMTP server: 5xx is permanent, the rest transient.
    async fn deliver(&self, msg: Message) -> Result<(), SendError> {
        self.transport
            .send(msg)
            .await
            .map(|_| ())
            .map_err(|e| SendError {
                permanent: e.is_permanent(),
                message: format!("smtp: {e}"),
            })
    }

    pub async fn send(&self, ds: &[Delivery], batch_id: Option<&str>) -> Result<(), SendError> {
        let msg = self.message(ds, batch_id)?;
        self.deliver(msg).await
    }
}

impl EmailSender {
    /// A plain message to the `to` recipients (the daily report).
    pub async fn send_text(&self, subject: &str, text: &str, id: &str) -> Result<(), SendError> {
        if self.to.is_empty() {
            return Err(SendError {
                permanent: true,
                message: "notify.email.to is empty".into(),
            });
        }
        let mut b = Message::builder()
            .from(self.from.clone())
            .subject(subject)
            .message_id(Some(format!("<keywatch-{id}@{}>", self.hostname)));
        for m in &self.to {
            b = b.to(m.clone());
        }
        let msg = b.body(text.to_owned()).map_err(|e| SendError {
            permanent: true,
            message: format!("cannot build the message: {e}"),
        })?;
        self.deliver(msg).await
    }
}
