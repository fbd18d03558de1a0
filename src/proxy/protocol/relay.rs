//! Opaque TCP: bytes both ways, half-close kept, idle connections closed.

use socket2::SockRef;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const BUF: usize = 8 * 1024;

/// How a relay ended, with the bytes moved each way.
#[derive(Debug)]
pub struct RelayEnd {
    /// Client → server bytes.
    pub sent: u64,
    /// Server → client bytes.
    pub received: u64,
    /// Closed for being idle longer than the idle timeout.
    pub idle: bool,
}

/// Copies `client` ⇄ `server` until both directions have ended. An end of
/// stream on one side is passed on as a write shutdown (half-close) while
/// the other direction keeps flowing. No byte either way for `idle` ends
/// both. An IO error on either side ends both.
pub async fn relay<C, S>(client: C, server: S, idle: Duration) -> io::Result<RelayEnd>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut sr, mut sw) = tokio::io::split(server);
    // Last activity, in ms since `origin` (both copies bump it).
    let origin = Instant::now();
    let last = AtomicU64::new(0);
    let up = copy(&mut cr, &mut sw, origin, &last);
    let down = copy(&mut sr, &mut cw, origin, &last);
    let watchdog = async {
        loop {
            let due = origin + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    };
    tokio::select! {
        r = async { tokio::try_join!(up, down) } => {
            let (sent, received) = r?;
            Ok(RelayEnd { sent, received, idle: false })
        }
        () = watchdog => Ok(RelayEnd { sent: 0, received: 0, idle: true }),
    }
}

async fn copy<R, W>(r: &mut R, w: &mut W, origin: Instant, last: &AtomicU64) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            // Pass the half-close on; the peer may already be gone.
            let _ = w.shutdown().await;
            return Ok(total);
        }
        let ms = u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        last.store(ms, Ordering::Relaxed);
        w.write_all(&buf[..n]).await?;
        total += n as u64;
    }
}

/// Closes with a TCP RST, so the client sees a failure at once instead of
/// an orderly end (DESIGN: opaque TCP gets a fast close).
pub fn fast_close(stream: TcpStream) {
    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    #[tokio::test]
    async fn half_close_keeps_the_other_direction() {
        let (mut client, client_side) = duplex(1024);
        let (server_side, mut server) = duplex(1024);
        let relay = tokio::spawn(relay(client_side, server_side, Duration::from_secs(60)));
        client.write_all(b"question").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"question");
        server.write_all(b"answer after half-close").await.unwrap();
        drop(server);
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"answer after half-close");
        let end = relay.await.unwrap().unwrap();
        assert_eq!((end.sent, end.received, end.idle), (8, 23, false));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_closed() {
        let (mut client, client_side) = duplex(1024);
        let (server_side, _server) = duplex(1024);
        let relay = tokio::spawn(relay(client_side, server_side, Duration::from_secs(30)));
        client.write_all(b"x").await.unwrap();
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(!relay.is_finished());
        let end = relay.await.unwrap().unwrap();
        assert!(end.idle);
    }
}
