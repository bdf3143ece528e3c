//! The beacon codec: the wire format of udp discovery's beacons and answers, their authentication, and the
//! freshness and service checks. Pure: no sockets, no clock (time comes in as `now_ms`), no randomness (the
//! nonce comes in with the [`Beacon`]).
//!
//! The format (version 1) is documented in the module docs of `discovery::udp`.
//!
//! Guarantees: [`decode`] authenticates before it reads any field, so an unauthenticated datagram is never
//! interpreted; it never reads past the datagram's end and refuses trailing bytes; [`encode`] refuses what
//! [`decode`] would refuse (empty or over-long names).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ring::{hkdf, hmac};

use super::BACKEND;
use crate::config::ClusterSecret;
use crate::discovery::DiscoveryError;

/// First bytes of every beacon.
pub const MAGIC: [u8; 4] = *b"BFCD";
/// The wire format version this build sends and accepts.
pub const VERSION: u8 = 1;
/// HKDF-SHA256 salt of the beacon key derivation.
pub const HKDF_SALT: &[u8] = b"bifrost-cluster/udp-discovery/v1";
/// HKDF-SHA256 `info` of the beacon key derivation.
pub const HKDF_INFO: &[u8] = b"bifrost-cluster/udp-discovery/hmac-sha256-key";
/// Largest accepted difference between a beacon's timestamp and this node's clock: 60 s either way.
pub const MAX_SKEW: Duration = Duration::from_secs(60);
/// Length of the random nonce.
pub const NONCE_LEN: usize = 16;
/// Length of the authentication tag (HMAC-SHA256).
pub const TAG_LEN: usize = 32;
/// Longest `service_name` and node id a beacon carries (the config's limit for both).
pub const MAX_NAME_LEN: usize = 128;

/// A beacon's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeaconKind {
    /// A broadcast announcement, answered by every peer that accepts it.
    Beacon,
    /// A unicast answer to a beacon; never answered.
    Answer,
}

impl BeaconKind {
    fn byte(self) -> u8 {
        match self {
            BeaconKind::Beacon => 1,
            BeaconKind::Answer => 2,
        }
    }
}

/// The content of a beacon or an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Beacon {
    /// Beacon or answer.
    pub kind: BeaconKind,
    /// The sender's `discovery.service_name`.
    pub service_name: String,
    /// The sender's node id.
    pub node_id: String,
    /// The gossip address the sender advertises.
    pub gossip_addr: SocketAddr,
    /// The sender's clock when it sent this, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Random bytes, unique per datagram (replay detection).
    pub nonce: [u8; NONCE_LEN],
}

/// Why a datagram was not accepted as a beacon.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BeaconError {
    /// Not a well-formed beacon (wrong magic, truncated, trailing bytes, a bad field).
    #[error("malformed beacon: {0}")]
    Malformed(String),
    /// A beacon of a version this build does not speak.
    #[error("unsupported beacon version {0} (this build speaks {VERSION})")]
    UnsupportedVersion(u8),
    /// The HMAC does not match: another cluster secret, or a forged or corrupted datagram.
    #[error("authentication failed (another cluster secret, or a forged or corrupted beacon)")]
    Unauthenticated,
    /// The timestamp is too far from this node's clock (an old beacon replayed, or a clock off by minutes).
    #[error("stale beacon: its timestamp is {skew_ms} ms from this node's clock (limit {} ms)", MAX_SKEW.as_millis())]
    Stale {
        /// `|beacon timestamp - now|` in milliseconds.
        skew_ms: u64,
    },
    /// A beacon of another cluster (another `service_name`).
    #[error("beacon for service {0:?}, not ours")]
    ForeignService(String),
}

/// The key beacons are authenticated with, derived from the cluster secret.
#[derive(Clone)]
pub struct BeaconKey(hmac::Key);

impl std::fmt::Debug for BeaconKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BeaconKey(<redacted>)")
    }
}

impl BeaconKey {
    /// HKDF-SHA256(secret, salt [`HKDF_SALT`], info [`HKDF_INFO`]) → 32-byte HMAC-SHA256 key.
    pub fn derive(secret: &ClusterSecret) -> Result<BeaconKey, DiscoveryError> {
        hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT)
            .extract(secret.expose_secret().as_bytes())
            .expand(&[HKDF_INFO], hmac::HMAC_SHA256)
            .map(|okm| BeaconKey(hmac::Key::from(okm)))
            .map_err(|_| DiscoveryError::Setup {
                backend: BACKEND,
                reason: "cannot derive the beacon key from security.cluster_secret (HKDF-SHA256)"
                    .into(),
            })
    }
}

/// Serializes and authenticates `beacon`. Names longer than [`MAX_NAME_LEN`] bytes are refused.
pub fn encode(beacon: &Beacon, key: &BeaconKey) -> Result<Vec<u8>, BeaconError> {
    let mut out = Vec::with_capacity(96 + beacon.service_name.len() + beacon.node_id.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(beacon.kind.byte());
    out.extend_from_slice(&beacon.timestamp_ms.to_be_bytes());
    out.extend_from_slice(&beacon.nonce);
    match beacon.gossip_addr.ip() {
        IpAddr::V4(v4) => {
            out.push(4);
            out.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.push(6);
            out.extend_from_slice(&v6.octets());
        }
    }
    out.extend_from_slice(&beacon.gossip_addr.port().to_be_bytes());
    for (what, name) in [
        ("service_name", &beacon.service_name),
        ("node id", &beacon.node_id),
    ] {
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return Err(BeaconError::Malformed(format!(
                "{what} must be 1..={MAX_NAME_LEN} bytes, got {}",
                name.len()
            )));
        }
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
    }
    let tag = hmac::sign(&key.0, &out);
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

/// A cursor over a datagram that never reads past its end.
struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], BeaconError> {
        let end = self.at.checked_add(n).filter(|end| *end <= self.data.len());
        match end {
            Some(end) => {
                let out = &self.data[self.at..end];
                self.at = end;
                Ok(out)
            }
            None => Err(BeaconError::Malformed(format!(
                "truncated at {what} (byte {} of {})",
                self.at,
                self.data.len()
            ))),
        }
    }

    fn byte(&mut self, what: &str) -> Result<u8, BeaconError> {
        Ok(self.take(1, what)?[0])
    }

    fn name(&mut self, what: &str) -> Result<String, BeaconError> {
        let len = usize::from(self.byte(what)?);
        if len == 0 || len > MAX_NAME_LEN {
            return Err(BeaconError::Malformed(format!(
                "{what} length {len} (expected 1..={MAX_NAME_LEN})"
            )));
        }
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| BeaconError::Malformed(format!("{what} is not UTF-8")))
    }
}

/// Parses and authenticates a datagram. Does not judge the timestamp or the service name (see [`check`]).
pub fn decode(datagram: &[u8], key: &BeaconKey) -> Result<Beacon, BeaconError> {
    if datagram.len() < MAGIC.len() + 1 || datagram[..MAGIC.len()] != MAGIC {
        return Err(BeaconError::Malformed(
            "not a beacon (no BFCD magic)".into(),
        ));
    }
    if datagram[MAGIC.len()] != VERSION {
        return Err(BeaconError::UnsupportedVersion(datagram[MAGIC.len()]));
    }
    if datagram.len() < MAGIC.len() + 2 + TAG_LEN {
        return Err(BeaconError::Malformed(format!(
            "{} bytes is too short",
            datagram.len()
        )));
    }
    let (body, tag) = datagram.split_at(datagram.len() - TAG_LEN);
    // Authenticate before reading any field: an unauthenticated datagram is never interpreted.
    hmac::verify(&key.0, body, tag).map_err(|_| BeaconError::Unauthenticated)?;
    let mut r = Reader { data: body, at: 5 };
    let kind = match r.byte("kind")? {
        1 => BeaconKind::Beacon,
        2 => BeaconKind::Answer,
        other => return Err(BeaconError::Malformed(format!("unknown kind {other}"))),
    };
    let mut ts = [0u8; 8];
    ts.copy_from_slice(r.take(8, "timestamp")?);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(r.take(NONCE_LEN, "nonce")?);
    let ip = match r.byte("address family")? {
        4 => {
            let mut o = [0u8; 4];
            o.copy_from_slice(r.take(4, "IPv4 address")?);
            IpAddr::V4(Ipv4Addr::from(o))
        }
        6 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(r.take(16, "IPv6 address")?);
            IpAddr::V6(Ipv6Addr::from(o))
        }
        other => {
            return Err(BeaconError::Malformed(format!(
                "unknown address family {other}"
            )));
        }
    };
    let mut port = [0u8; 2];
    port.copy_from_slice(r.take(2, "port")?);
    let service_name = r.name("service_name")?;
    let node_id = r.name("node id")?;
    if r.at != body.len() {
        return Err(BeaconError::Malformed(format!(
            "{} trailing bytes",
            body.len() - r.at
        )));
    }
    Ok(Beacon {
        kind,
        service_name,
        node_id,
        gossip_addr: SocketAddr::new(ip, u16::from_be_bytes(port)),
        timestamp_ms: u64::from_be_bytes(ts),
        nonce,
    })
}

/// Whether an authenticated beacon is for `service_name` and fresh at `now_ms` (within [`MAX_SKEW`]).
pub fn check(beacon: &Beacon, now_ms: u64, service_name: &str) -> Result<(), BeaconError> {
    if beacon.service_name != service_name {
        return Err(BeaconError::ForeignService(beacon.service_name.clone()));
    }
    let skew_ms = now_ms.abs_diff(beacon.timestamp_ms);
    if u128::from(skew_ms) > MAX_SKEW.as_millis() {
        return Err(BeaconError::Stale { skew_ms });
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod fixtures {
    //! Keys and beacons shared by the unit tests of the codec, the receiver and the backend.
    use super::*;

    pub(crate) const SECRET: &str = "unit-test-cluster-secret-0123456789";

    pub(crate) fn key(secret: &str) -> BeaconKey {
        BeaconKey::derive(&ClusterSecret::new(secret).expect("secret")).expect("key")
    }

    pub(crate) fn beacon(kind: BeaconKind, node: &str, addr: &str, ts: u64, nonce: u8) -> Beacon {
        Beacon {
            kind,
            service_name: "bifrost-cluster".into(),
            node_id: node.into(),
            gossip_addr: addr.parse().expect("addr"),
            timestamp_ms: ts,
            nonce: [nonce; NONCE_LEN],
        }
    }

    pub(crate) const NOW: u64 = 1_700_000_000_000;
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn the_key_is_hkdf_sha256_of_the_secret() {
        // Vector computed with Python's hmac module: prk = HMAC(salt, secret), key = HMAC(prk, info || 0x01).
        let tag = hmac::sign(&key(SECRET).0, b"hello");
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "4aa8254fa7def6e652abbbb04fdf154022840ca82ec472ea0dd8c9b8835e570b"
        );
    }

    #[test]
    fn a_beacon_round_trips_for_both_address_families() {
        let k = key(SECRET);
        for b in [
            beacon(BeaconKind::Beacon, "node-a", "10.77.0.1:10101", NOW, 1),
            beacon(BeaconKind::Answer, "n.b_c-9", "[fd00::7]:4000", NOW + 5, 2),
        ] {
            let bytes = encode(&b, &k).expect("encode");
            assert_eq!(&bytes[..4], b"BFCD");
            assert_eq!(decode(&bytes, &k), Ok(b.clone()));
            assert_eq!(check(&b, NOW, "bifrost-cluster"), Ok(()));
        }
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let k = key(SECRET);
        let bytes = encode(
            &beacon(BeaconKind::Beacon, "node-a", "10.77.0.1:10101", NOW, 7),
            &k,
        )
        .expect("encode");
        for i in 0..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(decode(&bad, &k).is_err(), "bit {i} flipped was accepted");
        }
    }

    #[test]
    fn a_wrong_key_is_refused_as_unauthenticated() {
        let bytes = encode(
            &beacon(BeaconKind::Beacon, "node-a", "10.77.0.1:10101", NOW, 7),
            &key(SECRET),
        )
        .expect("encode");
        assert_eq!(
            decode(&bytes, &key("another-cluster-secret-0123456789")),
            Err(BeaconError::Unauthenticated)
        );
    }

    #[test]
    fn truncated_extended_and_foreign_datagrams_are_malformed() {
        let k = key(SECRET);
        let bytes = encode(
            &beacon(BeaconKind::Beacon, "node-a", "10.77.0.1:10101", NOW, 7),
            &k,
        )
        .expect("encode");
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len], &k).is_err(), "truncated to {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer, &k).is_err());
        assert!(matches!(
            decode(b"GET / HTTP/1.1\r\n\r\n", &k),
            Err(BeaconError::Malformed(_))
        ));
        let mut v2 = bytes.clone();
        v2[4] = 2;
        assert_eq!(decode(&v2, &k), Err(BeaconError::UnsupportedVersion(2)));
        // A well-authenticated body with trailing bytes inside the MAC is still refused.
        let mut body = bytes[..bytes.len() - TAG_LEN].to_vec();
        body.push(0);
        let tag = hmac::sign(&k.0, &body);
        body.extend_from_slice(tag.as_ref());
        assert!(matches!(decode(&body, &k), Err(BeaconError::Malformed(_))));
    }

    #[test]
    fn stale_and_foreign_service_beacons_are_refused() {
        let skew = MAX_SKEW.as_millis() as u64;
        let b = |ts| beacon(BeaconKind::Beacon, "node-a", "10.77.0.1:10101", ts, 1);
        assert_eq!(check(&b(NOW - skew), NOW, "bifrost-cluster"), Ok(()));
        assert_eq!(check(&b(NOW + skew), NOW, "bifrost-cluster"), Ok(()));
        assert_eq!(
            check(&b(NOW - skew - 1), NOW, "bifrost-cluster"),
            Err(BeaconError::Stale { skew_ms: skew + 1 })
        );
        assert!(matches!(
            check(&b(NOW + 5 * skew), NOW, "bifrost-cluster"),
            Err(BeaconError::Stale { .. })
        ));
        assert_eq!(
            check(&b(NOW), NOW, "other-cluster"),
            Err(BeaconError::ForeignService("bifrost-cluster".into()))
        );
    }

    #[test]
    fn names_longer_than_the_limit_are_not_encoded() {
        let mut b = beacon(BeaconKind::Beacon, "node-a", "10.77.0.1:10101", NOW, 1);
        b.node_id = "x".repeat(MAX_NAME_LEN + 1);
        assert!(encode(&b, &key(SECRET)).is_err());
        b.node_id = "x".repeat(MAX_NAME_LEN);
        assert!(encode(&b, &key(SECRET)).is_ok());
    }
}
