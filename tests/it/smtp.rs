//! A real SMTP server on 127.0.0.1 for the tests: it speaks the protocol
//! lettre speaks (EHLO, MAIL, RCPT, DATA, QUIT), keeps what it receives, and
//! can refuse connections, reject with 550, or stall before its final 250.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Accept,
    /// Close every connection at once (the client sees a broken connection).
    Refuse,
    /// 550 for every recipient: a permanent failure.
    Reject550,
    /// Keep the message, then never answer the final ".".
    StallAfterData,
}

#[derive(Debug, Clone)]
pub struct Mail {
    pub rcpt: Vec<String>,
    pub data: String,
    /// Received over TLS.
    pub secure: bool,
}

impl Mail {
    /// A header's value, unfolded (long headers continue on lines that
    /// start with white space).
    pub fn header(&self, name: &str) -> Option<String> {
        let prefix = format!("{}:", name.to_lowercase());
        let mut lines = self
            .data
            .lines()
            .skip_while(|l| !l.to_lowercase().starts_with(&prefix));
        let mut value = lines.next()?[prefix.len()..].trim().to_owned();
        for more in lines.take_while(|l| l.starts_with([' ', '\t'])) {
            value.push(' ');
            value.push_str(more.trim());
        }
        Some(value)
    }
}

#[derive(Clone)]
pub struct SmtpServer {
    pub port: u16,
    mode: Arc<Mutex<Mode>>,
    mails: Arc<Mutex<Vec<Mail>>>,
    tls: Option<Arc<TlsSetup>>,
    /// Users that authenticated.
    auths: Arc<Mutex<Vec<String>>>,
}

impl SmtpServer {
    pub async fn start() -> SmtpServer {
        Self::start_with(None).await
    }

    pub async fn start_with(tls: Option<TlsSetup>) -> SmtpServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = SmtpServer {
            port: listener.local_addr().unwrap().port(),
            mode: Arc::new(Mutex::new(Mode::Accept)),
            mails: Arc::default(),
            tls: tls.map(Arc::new),
            auths: Arc::default(),
        };
        let s = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move { s.session(sock).await });
            }
        });
        server
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().unwrap().clone()
    }

    pub fn authenticated(&self) -> Vec<String> {
        self.auths.lock().unwrap().clone()
    }

    async fn session(&self, sock: tokio::net::TcpStream) {
        let mode = *self.mode.lock().unwrap();
        if mode == Mode::Refuse {
            return;
        }
        match &self.tls {
            Some(t) if t.implicit => {
                let Ok(tls) = t.acceptor.accept(sock).await else {
                    return;
                };
                Box::pin(self.converse(Box::new(tls), true)).await;
            }
            _ => Box::pin(self.converse(Box::new(sock), false)).await,
        }
    }

    /// One SMTP conversation; on STARTTLS the stream is upgraded and the
    /// conversation starts again over TLS.
    async fn converse(&self, stream: Box<dyn Io>, secure: bool) {
        let mode = *self.mode.lock().unwrap();
        let mut io = BufReader::new(stream);
        if !secure || self.tls.as_ref().is_some_and(|t| t.implicit) {
            let _ = io.get_mut().write_all(b"220 keywatch-test ESMTP\r\n").await;
        }
        let mut rcpt = vec![];
        let mut authed = self.tls.as_ref().is_none_or(|t| t.credentials.is_none());
        let mut line = String::new();
        loop {
            line.clear();
            match io.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let cmd = line.trim_end().to_owned();
            let upper = cmd.to_uppercase();
            let reply: Vec<u8> = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                let mut r = String::from("250-keywatch-test\r\n");
                if self.tls.as_ref().is_some_and(|t| !t.implicit) && !secure {
                    r.push_str("250-STARTTLS\r\n");
                }
                if secure {
                    r.push_str("250-AUTH PLAIN\r\n");
                }
                r.push_str("250 8BITMIME\r\n");
                r.into_bytes()
            } else if upper.starts_with("STARTTLS") {
                let _ = io.get_mut().write_all(b"220 go ahead\r\n").await;
                let acceptor = self.tls.as_ref().unwrap().acceptor.clone();
                let Ok(tls) = acceptor.accept(io.into_inner()).await else {
                    return;
                };
                return Box::pin(self.converse(Box::new(tls), true)).await;
            } else if upper.starts_with("AUTH PLAIN") {
                use base64::Engine;
                let given = cmd[10..].trim();
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(given)
                    .unwrap_or_default();
                let parts: Vec<String> = decoded
                    .split(|b| *b == 0)
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect();
                let want = self.tls.as_ref().and_then(|t| t.credentials.clone());
                if want.is_some_and(|(u, p)| parts.len() == 3 && parts[1] == u && parts[2] == p) {
                    authed = true;
                    self.auths.lock().unwrap().push(parts[1].clone());
                    b"235 2.7.0 authenticated\r\n".to_vec()
                } else {
                    b"535 5.7.8 bad credentials\r\n".to_vec()
                }
            } else if upper.starts_with("MAIL FROM") {
                if authed {
                    b"250 ok\r\n".to_vec()
                } else {
                    b"530 5.7.0 authentication required\r\n".to_vec()
                }
            } else if upper.starts_with("RCPT TO") {
                if mode == Mode::Reject550 {
                    b"550 5.1.1 mailbox unavailable\r\n".to_vec()
                } else {
                    rcpt.push(cmd[8..].trim().to_owned());
                    b"250 ok\r\n".to_vec()
                }
            } else if upper.starts_with("DATA") {
                let _ = io.get_mut().write_all(b"354 go ahead\r\n").await;
                let mut data = String::new();
                loop {
                    let mut l = String::new();
                    match io.read_line(&mut l).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    let l = l.trim_end_matches(['\r', '\n']);
                    if l == "." {
                        break;
                    }
                    data.push_str(l);
                    data.push('\n');
                }
                self.mails.lock().unwrap().push(Mail {
                    rcpt: std::mem::take(&mut rcpt),
                    data,
                    secure,
                });
                if mode == Mode::StallAfterData {
                    std::future::pending::<()>().await;
                }
                b"250 queued\r\n".to_vec()
            } else if upper.starts_with("QUIT") {
                let _ = io.get_mut().write_all(b"221 bye\r\n").await;
                return;
            } else if upper.starts_with("RSET") || upper.starts_with("NOOP") {
                b"250 ok\r\n".to_vec()
            } else {
                b"502 not implemented\r\n".to_vec()
            };
            if io.get_mut().write_all(&reply).await.is_err() {
                return;
            }
        }
    }
}

/// A plain or TLS stream, boxed so STARTTLS can swap one for the other.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// TLS for the test server: a certificate the test makes, for 127.0.0.1.
pub struct TlsSetup {
    pub implicit: bool,
    pub credentials: Option<(String, String)>,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl TlsSetup {
    /// Returns the setup and the certificate's PEM, for the client to trust.
    pub fn new(implicit: bool, credentials: Option<(&str, &str)>) -> (TlsSetup, String) {
        keywatch::rpc::transport::install_crypto_provider();
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let cert_der = ck.cert.der().clone();
        let key = tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(
            ck.signing_key.serialize_der().into(),
        );
        let config = tokio_rustls::rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert_der], key)
            .unwrap();
        let setup = TlsSetup {
            implicit,
            credentials: credentials.map(|(u, p)| (u.to_owned(), p.to_owned())),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        };
        (setup, ck.cert.pem())
    }
}
