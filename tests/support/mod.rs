//! Helpers shared by the tests (and `benches/replication.rs`) that start real nodes on loopback.
#![allow(dead_code)] // each test crate uses a different subset

use std::net::{Ipv4Addr, TcpListener, UdpSocket};

/// A port free on 127.0.0.1 for both UDP and TCP (the gossip port and its TCP health listener).
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("udp bind");
        let port = udp.local_addr().expect("addr").port();
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on loopback");
}

pub mod dns_server;
pub mod http;
pub mod netns;
