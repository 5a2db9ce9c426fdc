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
