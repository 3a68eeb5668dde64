//! Listening sockets for the workers: one per worker on the same address
//! with SO_REUSEPORT, so the kernel spreads connections across workers and
//! each connection lives on one thread from accept to close.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Binds `n` listeners on `addr` (with SO_REUSEPORT when `n > 1`).
pub fn bind(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    (0..n.max(1))
        .map(|_| {
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            socket.set_reuse_address(true)?;
            if n > 1 {
                socket.set_reuse_port(true)?;
            }
            socket.set_nonblocking(true)?;
            socket.bind(&addr.into())?;
            socket.listen(4096)?;
            Ok(socket.into())
        })
        .collect()
}
