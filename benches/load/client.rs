//! A minimal HTTP/1.1 keep-alive client: the load generator must cost the same on every
//! path and add as little as possible, so it writes pre-built requests and parses only
//! what timing needs (status, framing, first body byte).

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

pub struct Reply {
    pub status: u16,
    /// False when the server announced `Connection: close`.
    pub reusable: bool,
    /// From the end of the request write to the first body byte.
    pub ttfb: Duration,
}

impl Conn {
    pub async fn open(addr: &str) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(16 * 1024),
        })
    }

    /// Sends `req` and reads the whole response. Err = the connection is unusable.
    pub async fn send(&mut self, req: &[u8]) -> std::io::Result<Reply> {
        self.stream.write_all(req).await?;
        let sent = Instant::now();
        self.buf.clear();
        let head_end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p + 4;
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).map_err(|_| bad("head not utf-8"))?;
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no status"))?;
        let lower = head.to_ascii_lowercase();
        let chunked = lower.contains("transfer-encoding: chunked");
        let length = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        let close = lower.contains("connection: close");
        self.buf.drain(..head_end);
        if self.buf.is_empty() {
            self.fill().await?;
        }
        let ttfb = sent.elapsed();
        if chunked {
            self.read_chunked().await?;
        } else if let Some(n) = length {
            while self.buf.len() < n {
                self.fill().await?;
            }
            self.buf.drain(..n);
        } else {
            return Err(bad("no framing"));
        }
        Ok(Reply {
            status,
            ttfb,
            reusable: !close,
        })
    }

    async fn read_chunked(&mut self) -> std::io::Result<()> {
        loop {
            let line_end = loop {
                if let Some(p) = find(&self.buf, b"\r\n") {
                    break p;
                }
                self.fill().await?;
            };
            let size_str =
                std::str::from_utf8(&self.buf[..line_end]).map_err(|_| bad("chunk size"))?;
            let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("chunk size"))?;
            let need = line_end + 2 + size + 2;
            while self.buf.len() < need {
                self.fill().await?;
            }
            self.buf.drain(..need);
            if size == 0 {
                return Ok(());
            }
        }
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        let mut tmp = [0u8; 16 * 1024];
        let n = self.stream.read(&mut tmp).await?;
        if n == 0 {
            return Err(bad("eof"));
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(())
    }
}

fn bad(m: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A POST request with a JSON body, ready to write.
pub fn post(host: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nAuthorization: Bearer sk-bench\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}
