//! A small authoritative DNS server for tests, on 127.0.0.1 (UDP and TCP, same free port), answering from an
//! in-memory zone of A, AAAA and SRV records that the test changes while it runs. Unknown names get NXDOMAIN,
//! a known name without records of the asked type gets NOERROR with no answer; both carry an SOA whose
//! negative TTL is one hour, as a real zone would, so a resolver that cached negative answers would miss a
//! record added later. SRV answers carry the targets' addresses in the additional section unless turned off.
//! Every query is logged, and a name can be made to fail (an error code) or go unanswered. No truncation.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// How the server treats queries for a name (or every name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Answer from the zone.
    Answer,
    /// Answer with this response code and nothing else (SERVFAIL, REFUSED...).
    Fail(ResponseCode),
    /// Never answer.
    Silent,
}

/// The transport a query came over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
}

/// One query the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// The queried name, lowercase, without the final dot.
    pub name: String,
    /// The queried type.
    pub record_type: RecordType,
    /// UDP or TCP.
    pub transport: Transport,
}

#[derive(Default)]
struct State {
    records: Vec<Record>,
    behaviour: HashMap<String, Behaviour>,
    all: Option<Behaviour>,
    no_glue: bool,
    log: Vec<Logged>,
}

/// The running server; stops when dropped.
pub struct DnsServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    tasks: Vec<JoinHandle<()>>,
}

/// The negative TTL of the zone's SOA, in seconds.
pub const NEGATIVE_TTL: u32 = 3_600;

impl DnsServer {
    /// Binds UDP and TCP on the same free port of 127.0.0.1 and starts answering.
    pub async fn start() -> DnsServer {
        for _ in 0..100 {
            let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
                .await
                .expect("udp bind");
            let addr = udp.local_addr().expect("udp addr");
            let Ok(tcp) = TcpListener::bind(addr).await else {
                continue;
            };
            let state = Arc::new(Mutex::new(State::default()));
            let tasks = vec![
                tokio::spawn(serve_udp(udp, Arc::clone(&state))),
                tokio::spawn(serve_tcp(tcp, Arc::clone(&state))),
            ];
            return DnsServer { addr, state, tasks };
        }
        panic!("no port free for both UDP and TCP on 127.0.0.1");
    }

    /// Where it listens (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("dns server state")
    }

    /// Adds an A record.
    pub fn add_a(&self, name: &str, ip: Ipv4Addr, ttl: u32) {
        self.add(name, ttl, RData::A(A(ip)));
    }

    /// Adds an AAAA record.
    pub fn add_aaaa(&self, name: &str, ip: Ipv6Addr, ttl: u32) {
        self.add(name, ttl, RData::AAAA(AAAA(ip)));
    }

    /// Adds an SRV record (priority 10, weight 10).
    pub fn add_srv(&self, name: &str, target: &str, port: u16, ttl: u32) {
        self.add(name, ttl, RData::SRV(SRV::new(10, 10, port, fqdn(target))));
    }

    fn add(&self, name: &str, ttl: u32, data: RData) {
        self.state()
            .records
            .push(Record::from_rdata(fqdn(name), ttl, data));
    }

    /// Removes every record of `name`.
    pub fn remove(&self, name: &str) {
        let name = fqdn(name);
        self.state().records.retain(|r| r.name != name);
    }

    /// How queries for `name` are treated (default: [`Behaviour::Answer`]).
    pub fn set_behaviour(&self, name: &str, behaviour: Behaviour) {
        self.state().behaviour.insert(key(&fqdn(name)), behaviour);
    }

    /// How every query is treated, overriding the per-name behaviour; `None` restores it.
    pub fn set_behaviour_all(&self, behaviour: Option<Behaviour>) {
        self.state().all = behaviour;
    }

    /// Whether SRV answers carry the targets' A and AAAA records in the additional section (default: yes).
    pub fn set_glue(&self, on: bool) {
        self.state().no_glue = !on;
    }

    /// Every query received so far.
    pub fn queries(&self) -> Vec<Logged> {
        self.state().log.clone()
    }

    /// Forgets the queries received so far.
    pub fn clear_queries(&self) {
        self.state().log.clear();
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn fqdn(name: &str) -> Name {
    let text = if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    };
    Name::from_ascii(&text).expect("a valid test name")
}

fn key(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

async fn serve_udp(socket: UdpSocket, state: Arc<Mutex<State>>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((len, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        if let Some(answer) = answer(&state, &buf[..len], Transport::Udp) {
            let _ = socket.send_to(&answer, from).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, state: Arc<Mutex<State>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(serve_tcp_connection(stream, Arc::clone(&state)));
    }
}

async fn serve_tcp_connection(mut stream: TcpStream, state: Arc<Mutex<State>>) {
    loop {
        let Ok(len) = stream.read_u16().await else {
            return;
        };
        let mut buf = vec![0u8; usize::from(len)];
        if stream.read_exact(&mut buf).await.is_err() {
            return;
        }
        let Some(answer) = answer(&state, &buf, Transport::Tcp) else {
            continue;
        };
        let Ok(len) = u16::try_from(answer.len()) else {
            return;
        };
        if stream.write_u16(len).await.is_err() || stream.write_all(&answer).await.is_err() {
            return;
        }
    }
}

/// The encoded answer to `request`, or `None` to stay silent.
fn answer(state: &Mutex<State>, request: &[u8], transport: Transport) -> Option<Vec<u8>> {
    let request = Message::from_vec(request).ok()?;
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_queries(request.queries.iter().cloned());
    let (Some(query), OpCode::Query, 1) = (
        request.queries.first(),
        request.metadata.op_code,
        request.queries.len(),
    ) else {
        response.metadata.response_code = ResponseCode::FormErr;
        return response.to_vec().ok();
    };
    let mut state = state.lock().expect("dns server state");
    state.log.push(Logged {
        name: key(query.name()),
        record_type: query.query_type(),
        transport,
    });
    let behaviour = state
        .all
        .or_else(|| state.behaviour.get(&key(query.name())).copied())
        .unwrap_or(Behaviour::Answer);
    match behaviour {
        Behaviour::Silent => return None,
        Behaviour::Fail(code) => {
            response.metadata.response_code = code;
            return response.to_vec().ok();
        }
        Behaviour::Answer => {}
    }
    response.metadata.authoritative = true;
    fill(&state, query, &mut response);
    response.to_vec().ok()
}

fn fill(state: &State, query: &Query, response: &mut Message) {
    let name = query.name();
    let answers: Vec<Record> = state
        .records
        .iter()
        .filter(|r| r.name == *name && r.record_type() == query.query_type())
        .cloned()
        .collect();
    if answers.is_empty() {
        let exists = state.records.iter().any(|r| r.name == *name);
        response.metadata.response_code = if exists {
            ResponseCode::NoError
        } else {
            ResponseCode::NXDomain
        };
        response.add_authority(soa());
        return;
    }
    if !state.no_glue {
        for record in &answers {
            if let RData::SRV(srv) = &record.data {
                response.add_additionals(
                    state
                        .records
                        .iter()
                        .filter(|r| {
                            r.name == srv.target
                                && matches!(r.record_type(), RecordType::A | RecordType::AAAA)
                        })
                        .cloned(),
                );
            }
        }
    }
    response.add_answers(answers);
}

/// The zone's SOA (apex `test.`), with a one-hour negative TTL.
fn soa() -> Record {
    let apex = fqdn("test");
    Record::from_rdata(
        apex.clone(),
        NEGATIVE_TTL,
        RData::SOA(SOA::new(
            fqdn("ns.test"),
            fqdn("hostmaster.test"),
            1,
            3_600,
            600,
            86_400,
            NEGATIVE_TTL,
        )),
    )
}
