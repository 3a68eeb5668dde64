//! Bounded echo servers and clients for real traffic across the testbed.
//! Every loop has a fixed count and every socket a timeout, so nothing runs
//! on by itself.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    thread::{self, JoinHandle},
    time::Duration,
};

use super::in_netns;

const TIMEOUT: Duration = Duration::from_secs(3);

/// A TCP echo server in `ns` on `addr` that serves `connections` peers (one
/// read and echo each), then stops.
pub fn tcp_echo_server(ns: &str, addr: SocketAddr, connections: usize) -> JoinHandle<()> {
    let listener = in_netns(ns, move || TcpListener::bind(addr))
        .unwrap_or_else(|e| panic!("binding tcp {addr}: {e}"));
    thread::spawn(move || {
        for _ in 0..connections {
            let (mut s, _) = listener.accept().expect("accept");
            s.set_read_timeout(Some(TIMEOUT)).unwrap();
            let mut buf = [0u8; 512];
            let k = s.read(&mut buf).expect("read");
            s.write_all(&buf[..k]).expect("write");
        }
    })
}

/// A UDP echo server in `ns` on `addr` that echoes `datagrams`, then stops.
pub fn udp_echo_server(ns: &str, addr: SocketAddr, datagrams: usize) -> JoinHandle<()> {
    let socket = in_netns(ns, move || UdpSocket::bind(addr))
        .unwrap_or_else(|e| panic!("binding udp {addr}: {e}"));
    thread::spawn(move || {
        socket.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut buf = [0u8; 512];
        for _ in 0..datagrams {
            let (k, peer) = socket.recv_from(&mut buf).expect("udp recv");
            socket.send_to(&buf[..k], peer).expect("udp send");
        }
    })
}

/// `n` TCP connections from `ns` to `addr`, each sending a line and reading
/// the echo. Returns how many round trips succeeded.
pub fn tcp_round_trips(ns: &str, addr: SocketAddr, n: usize) -> usize {
    in_netns(ns, move || {
        (0..n)
            .filter(|i| {
                let msg = format!("hello {i}\n");
                let attempt = || -> std::io::Result<bool> {
                    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
                    s.set_read_timeout(Some(TIMEOUT))?;
                    s.write_all(msg.as_bytes())?;
                    let mut buf = [0u8; 512];
                    let k = s.read(&mut buf)?;
                    Ok(&buf[..k] == msg.as_bytes())
                };
                attempt().unwrap_or(false)
            })
            .count()
    })
}

/// `n` UDP datagrams from `ns` (bound to `from`) to `addr`, each awaiting
/// its echo. Returns how many came back intact.
pub fn udp_round_trips(ns: &str, from: SocketAddr, addr: SocketAddr, n: usize) -> usize {
    in_netns(ns, move || {
        let Ok(socket) = UdpSocket::bind(from) else {
            return 0;
        };
        if socket.set_read_timeout(Some(TIMEOUT)).is_err() {
            return 0;
        }
        (0..n)
            .filter(|i| {
                let msg = format!("datagram {i}");
                let mut buf = [0u8; 512];
                socket.send_to(msg.as_bytes(), addr).is_ok()
                    && matches!(socket.recv_from(&mut buf), Ok((k, _)) if &buf[..k] == msg.as_bytes())
            })
            .count()
    })
}

/// An HTTP/1.1 server standing in for a pod: answers every request with
/// `200` and a body naming `pod` and the request line, keeps connections
/// alive, and stops accepting after `lifetime`.
pub fn http_echo_server(
    ns: &str,
    addr: SocketAddr,
    pod: &str,
    lifetime: Duration,
) -> JoinHandle<()> {
    let listener = in_netns(ns, move || TcpListener::bind(addr))
        .unwrap_or_else(|e| panic!("binding http {addr}: {e}"));
    let pod = pod.to_string();
    thread::spawn(move || {
        let deadline = std::time::Instant::now() + lifetime;
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        while std::time::Instant::now() < deadline {
            match listener.accept() {
                Ok((s, _)) => {
                    let pod = pod.clone();
                    thread::spawn(move || serve_http_echo(s, &pod, deadline));
                }
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        }
    })
}

fn serve_http_echo(mut s: TcpStream, pod: &str, deadline: std::time::Instant) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while std::time::Instant::now() < deadline {
        let n = match s.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(_) => return,
        };
        buf.extend_from_slice(&chunk[..n]);
        // Requests without bodies: answer each complete head.
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            let line = head.lines().next().unwrap_or("").to_string();
            let host = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("host: ")
                        .or_else(|| l.strip_prefix("Host: "))
                })
                .unwrap_or("-");
            let body = format!("pod={pod} host={host} request=\"{line}\"\n");
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nServer: echo\r\n\r\n{body}",
                body.len()
            );
            if s.write_all(resp.as_bytes()).is_err()
                || head.to_ascii_lowercase().contains("connection: close")
            {
                return;
            }
        }
    }
}

/// A plain `GET` from `ns` to `addr` with `Host: host`: (status, body).
pub fn http_get_from(
    ns: &str,
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> std::io::Result<(u16, String)> {
    let (host, path) = (host.to_string(), path.to_string());
    in_netns(ns, move || super::http::get(addr, &host, &path))
}
