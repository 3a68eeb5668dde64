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

const TIMEOUT: Duration = Duration::from_secs(10);

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
