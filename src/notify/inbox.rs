//! A mail receiver on 127.0.0.1 for `keywatch demo` when no channel is
//! configured: it speaks the part of SMTP lettre uses (EHLO, MAIL, RCPT,
//! DATA, RSET, NOOP, QUIT; no TLS, no authentication), parses each message
//! it accepts (headers decoded, the text part found and decoded) and hands
//! it over on a channel. It binds loopback only and is meant for one run.

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// One message received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The envelope's recipients.
    pub to: Vec<String>,
    pub subject: String,
    /// The plain-text part (or the text of the HTML part when there is none).
    pub text: String,
}

/// The longest command line or message line accepted, the largest
/// message, and the longest wait for a line: a client beyond them is
/// disconnected. More recipients than MAX_RCPT are refused.
const MAX_LINE: u64 = 64 * 1024;
const MAX_MESSAGE: usize = 4 * 1024 * 1024;
const LINE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
const MAX_RCPT: usize = 100;

/// Listens on 127.0.0.1 (a free port); returns the port and the messages
/// as they arrive. Once the receiver is dropped, the next connection ends
/// the listening.
pub async fn start() -> std::io::Result<(u16, mpsc::UnboundedReceiver<Received>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            if tx.is_closed() {
                return;
            }
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Err(e) = session(sock, &tx).await {
                    tracing::debug!(error = %e, "demo inbox: session ended");
                }
            });
        }
    });
    Ok((port, rx))
}

async fn session(sock: TcpStream, out: &mpsc::UnboundedSender<Received>) -> std::io::Result<()> {
    let (read, mut write) = sock.into_split();
    let mut read = BufReader::new(read);
    write.write_all(b"220 keywatch-demo ESMTP\r\n").await?;
    let mut rcpt = Vec::new();
    loop {
        let Some(line) = read_line(&mut read).await? else {
            return Ok(());
        };
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-keywatch-demo\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
        } else if upper.starts_with("HELO") {
            b"250 keywatch-demo\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            rcpt.clear();
            b"250 OK\r\n"
        } else if upper.starts_with("RCPT TO:") && rcpt.len() >= MAX_RCPT {
            b"452 too many recipients\r\n"
        } else if let Some(to) = upper.strip_prefix("RCPT TO:").map(|_| &line[8..]) {
            rcpt.push(
                to.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned(),
            );
            b"250 OK\r\n"
        } else if upper.starts_with("DATA") {
            write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
            let Some(data) = read_data(&mut read).await? else {
                write
                    .write_all(b"554 message too large, or the client went quiet\r\n")
                    .await?;
                return Ok(());
            };
            if out.send(parse(std::mem::take(&mut rcpt), &data)).is_err() {
                write.write_all(b"421 closing\r\n").await?;
                return Ok(());
            }
            b"250 OK: received\r\n"
        } else if upper.starts_with("RSET") {
            rcpt.clear();
            b"250 OK\r\n"
        } else if upper.starts_with("NOOP") {
            b"250 OK\r\n"
        } else if upper.starts_with("QUIT") {
            write.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            b"502 command not implemented\r\n"
        };
        write.write_all(reply).await?;
    }
}

/// One line without its line ending; None at the end of the stream, for a
/// line longer than [`MAX_LINE`], or after [`LINE_TIMEOUT`] without one.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    read: &mut R,
) -> std::io::Result<Option<String>> {
    let mut buf = Vec::new();
    let mut limited = read.take(MAX_LINE);
    let reading = limited.read_until(b'\n', &mut buf);
    let Ok(n) = tokio::time::timeout(LINE_TIMEOUT, reading).await else {
        return Ok(None);
    };
    let n = n?;
    if n == 0 || !buf.ends_with(b"\n") {
        return Ok(None);
    }
    while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        buf.pop();
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// The message after DATA, up to the line holding a single dot, with the
/// dots that escape a leading dot removed; None when it is too large, or
/// the stream ends or goes quiet before the dot.
async fn read_data<R: tokio::io::AsyncBufRead + Unpin>(
    read: &mut R,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut data = Vec::new();
    loop {
        let Some(line) = read_line(read).await? else {
            return Ok(None);
        };
        if line == "." {
            return Ok(Some(data));
        }
        let line = line.strip_prefix('.').unwrap_or(&line);
        data.extend_from_slice(line.as_bytes());
        data.extend_from_slice(b"\r\n");
        if data.len() > MAX_MESSAGE {
            return Ok(None);
        }
    }
}

fn parse(to: Vec<String>, data: &[u8]) -> Received {
    let message = mail_parser::MessageParser::default().parse(data);
    let subject = message
        .as_ref()
        .and_then(|m| m.subject())
        .unwrap_or("(no subject)")
        .to_owned();
    let text = message
        .as_ref()
        .and_then(|m| m.body_text(0))
        .map(|t| t.into_owned())
        .unwrap_or_default();
    Received { to, subject, text }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multipart_message_with_encoded_subject_and_quoted_printable_text_is_decoded() {
        let data = "Subject: =?utf-8?b?W0NSSVRJQ0FMXSB0cmVhc3VyeS5uZWFyIOKAlCBuZXcga2V5?=\r\n\
            MIME-Version: 1.0\r\n\
            Content-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n\
            --b1\r\nContent-Type: text/plain; charset=utf-8\r\n\
            Content-Transfer-Encoding: quoted-printable\r\n\r\n\
            A key you did not expect =E2=80=94 full access.\r\nSecond line\r\n\
            --b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>html</p>\r\n--b1--\r\n";
        let got = parse(vec!["ops@example.com".into()], data.as_bytes());
        assert_eq!(got.subject, "[CRITICAL] treasury.near \u{2014} new key");
        assert_eq!(
            got.text.lines().collect::<Vec<_>>(),
            [
                "A key you did not expect \u{2014} full access.",
                "Second line"
            ]
        );
        assert_eq!(got.to, ["ops@example.com"]);
    }

    #[tokio::test]
    async fn a_message_sent_over_smtp_arrives_with_dots_unescaped() {
        let (port, mut mails) = start().await.unwrap();
        let sock = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (read, mut write) = sock.into_split();
        let mut read = BufReader::new(read);
        let mut replies = vec![read_line(&mut read).await.unwrap().unwrap()];
        for line in [
            "EHLO me",
            "MAIL FROM:<kw@example.com>",
            "RCPT TO:<Ops@Example.com>",
            "DATA",
            "Subject: hello\r\n\r\n..leading dot\r\nplain\r\n.",
            "QUIT",
        ] {
            write
                .write_all(format!("{line}\r\n").as_bytes())
                .await
                .unwrap();
            // EHLO's reply has three lines
            let lines = if line.starts_with("EHLO") { 3 } else { 1 };
            for _ in 0..lines {
                replies.push(read_line(&mut read).await.unwrap().unwrap());
            }
        }
        let got = mails.recv().await.unwrap();
        assert_eq!(got.subject, "hello");
        assert_eq!(got.text, ".leading dot\r\nplain\r\n");
        assert_eq!(got.to, ["Ops@Example.com"]);
        assert_eq!(replies[0], "220 keywatch-demo ESMTP");
        assert!(
            replies.iter().any(|r| r == "354 end with <CRLF>.<CRLF>"),
            "{replies:?}"
        );
        assert!(
            replies.iter().any(|r| r == "250 OK: received"),
            "{replies:?}"
        );
        assert_eq!(replies.last().unwrap(), "221 bye");
    }
}
