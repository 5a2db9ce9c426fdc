//! What the benchmarks share: an SMTP server on loopback that accepts every
//! message and notes when.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Accepted messages: (Message-ID, when the final "." arrived).
pub type Accepted = Arc<Mutex<Vec<(String, SystemTime)>>>;

/// An SMTP server that accepts everything and notes when each message was
/// accepted (the moment the final "." arrives), by Message-ID.
pub async fn smtp_server() -> (u16, Accepted) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let seen = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (sock, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut r = BufReader::new(r);
                w.write_all(b"220 bench ESMTP\r\n").await.unwrap();
                let mut line = String::new();
                let mut in_data = false;
                let mut message_id = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if in_data {
                        if line == ".\r\n" {
                            let at = SystemTime::now();
                            seen.lock()
                                .unwrap()
                                .push((std::mem::take(&mut message_id), at));
                            in_data = false;
                            w.write_all(b"250 ok\r\n").await.unwrap();
                        } else if line.to_ascii_lowercase().starts_with("message-id:") {
                            message_id = line[11..].trim().to_owned();
                        }
                        continue;
                    }
                    let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" | "HELO" => b"250 bench\r\n",
                        "DATA" => {
                            in_data = true;
                            b"354 go on\r\n"
                        }
                        "QUIT" => {
                            let _ = w.write_all(b"221 bye\r\n").await;
                            return;
                        }
                        _ => b"250 ok\r\n",
                    };
                    w.write_all(reply).await.unwrap();
                }
            });
        }
    });
    (port, accepted)
}

// The wire counter below is used by the ingest benchmark only.

/// Statements and round trips a client sent to Postgres, counted from the
/// wire (frontend messages), so nothing in keywatch has to count itself.
#[allow(dead_code)]
#[derive(Debug, Default)]
pub struct Wire {
    /// `Query` (simple protocol) and `Execute` messages.
    pub statements: std::sync::atomic::AtomicU64,
    /// `Query` and `Sync` messages: each waits for the server's answer.
    pub round_trips: std::sync::atomic::AtomicU64,
    /// `COMMIT` statements.
    pub commits: std::sync::atomic::AtomicU64,
}

/// A TCP proxy to the Postgres at `upstream` (host:port) that counts the
/// frontend messages passing through it. Connect without TLS
/// (`sslmode=disable`) so the messages can be read.
#[allow(dead_code)]
pub async fn counting_proxy(upstream: String) -> (u16, Arc<Wire>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let wire = Arc::new(Wire::default());
    let counts = wire.clone();
    tokio::spawn(async move {
        loop {
            let (client, _) = listener.accept().await.unwrap();
            let server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
            // small messages, forwarded at once (Nagle would hold each
            // for the peer's delayed ack)
            client.set_nodelay(true).unwrap();
            server.set_nodelay(true).unwrap();
            let counts = counts.clone();
            tokio::spawn(async move {
                let (mut cr, cw) = client.into_split();
                let (sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let (mut sr, mut cw) = (sr, cw);
                    // Either side closing ends the connection, the usual way
                    // it ends: an error here is that, not a failure.
                    if let Err(e) = tokio::io::copy(&mut sr, &mut cw).await {
                        eprintln!("proxy: server side closed: {e}");
                    }
                });
                if let Err(e) = count_frontend(&mut cr, &mut sw, &counts).await
                    && e.kind() != std::io::ErrorKind::UnexpectedEof
                {
                    eprintln!("proxy: client side closed: {e}");
                }
            });
        }
    });
    (port, wire)
}

/// Forwards the client's bytes, counting messages: the startup packet has
/// no type byte; every message after it is a type byte and a length.
#[allow(dead_code)]
async fn count_frontend(
    from: &mut (impl tokio::io::AsyncRead + Unpin),
    to: &mut (impl tokio::io::AsyncWrite + Unpin),
    counts: &Wire,
) -> std::io::Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 4];
    from.read_exact(&mut len).await?;
    let mut startup = vec![0u8; u32::from_be_bytes(len) as usize - 4];
    from.read_exact(&mut startup).await?;
    to.write_all(&len).await?;
    to.write_all(&startup).await?;
    loop {
        let mut message = vec![0u8; 5];
        from.read_exact(&mut message).await?;
        let size = u32::from_be_bytes([message[1], message[2], message[3], message[4]]) as usize;
        message.resize(1 + size, 0);
        from.read_exact(&mut message[5..]).await?;
        match message[0] {
            b'Q' => {
                counts.statements.fetch_add(1, Relaxed);
                counts.round_trips.fetch_add(1, Relaxed);
                if message[5..].starts_with(b"COMMIT") {
                    counts.commits.fetch_add(1, Relaxed);
                }
            }
            b'E' => {
                counts.statements.fetch_add(1, Relaxed);
            }
            b'S' => {
                counts.round_trips.fetch_add(1, Relaxed);
            }
            _ => {}
        }
        to.write_all(&message).await?;
    }
}
