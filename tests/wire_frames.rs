//! Wire frames: round trips, refusals with typed errors, no panic on arbitrary bytes, and the batch packer's
//! size bound.

use bifrost_cluster::UnixMs;
use bifrost_cluster::counter::Window;
use bifrost_cluster::wire::{
    self, BatchPacker, DeltaBatch, Digest, Entry, Frame, HEADER_LEN, Hello, MAX_ENTRIES_PER_FRAME,
    OriginDigest, OriginGroup, OriginKind, StateChunk, StateRequest, WireError, WireWindow,
};
use proptest::prelude::*;
use rkyv::rancor;

fn window_strategy() -> impl Strategy<Value = WireWindow> {
    prop_oneof![
        Just("1s"),
        Just("30s"),
        Just("1m"),
        Just("1h"),
        Just("1d"),
        Just("1w"),
        Just("1M"),
        Just("1Y"),
        Just("30d@2026-12-01T10:00:00Z"),
        Just("1h@2026-12-01T10:17:30.250Z"),
        Just("1w@0")
    ]
    .prop_map(|w| WireWindow::from(Window::parse(w).unwrap()))
}

fn entry_strategy() -> impl Strategy<Value = Entry> {
    (
        "[a-z/0-9._-]{1,80}",
        window_strategy(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(key, window, epoch, value)| Entry {
            key,
            window,
            epoch,
            value,
        })
}

fn batch_strategy() -> impl Strategy<Value = DeltaBatch> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        prop::collection::vec(
            (any::<u64>(), prop::collection::vec(entry_strategy(), 0..20)),
            0..4,
        ),
    )
        .prop_map(|(sender, sequence, sent_at_ms, groups)| DeltaBatch {
            sender,
            sequence,
            sent_at_ms,
            groups: groups
                .into_iter()
                .map(|(origin, entries)| OriginGroup {
                    origin,
                    kind: OriginKind::Replica,
                    entries,
                })
                .collect(),
        })
}

#[test]
fn an_anchored_window_crosses_the_wire_with_its_phase() {
    let window = Window::parse("30d@2026-12-01T10:00:00Z").unwrap();
    let wire_window = WireWindow::from(window);
    assert_eq!(wire_window.alignment, 2);
    assert_eq!(wire_window.phase_ms, 28 * 86_400_000 + 10 * 3_600_000);
    let batch = DeltaBatch {
        sender: 1,
        sequence: 1,
        sent_at_ms: 0,
        groups: vec![OriginGroup {
            origin: 1,
            kind: OriginKind::Replica,
            entries: vec![Entry {
                key: "budget/team-a".into(),
                window: wire_window,
                epoch: window.epoch_at(UnixMs::new(1_796_119_200_000)),
                value: 7,
            }],
        }],
    };
    let frame = wire::encode(&batch).unwrap();
    let Ok(Frame::DeltaBatch(archived)) = wire::decode(&frame) else {
        panic!("not a batch")
    };
    assert_eq!(archived.groups[0].entries[0].window.window(), Ok(window));
    assert_ne!(
        archived.groups[0].entries[0].window.window(),
        Ok(Window::parse("30d@2026-12-01T10:00:01Z").unwrap())
    );
}

proptest! {
    #[test]
    fn delta_batches_round_trip(batch in batch_strategy()) {
        let frame = wire::encode(&batch).unwrap();
        let Ok(Frame::DeltaBatch(archived)) = wire::decode(&frame) else { panic!("not a batch") };
        let back: DeltaBatch = rkyv::deserialize::<DeltaBatch, rancor::Error>(archived).unwrap();
        prop_assert_eq!(back, batch);
    }

    #[test]
    fn decode_reads_frames_at_any_alignment(batch in batch_strategy(), offset in 0usize..8) {
        let frame = wire::encode(&batch).unwrap();
        let mut shifted = vec![0u8; offset];
        shifted.extend_from_slice(&frame);
        let Ok(Frame::DeltaBatch(archived)) = wire::decode(&shifted[offset..]) else { panic!("not a batch") };
        prop_assert_eq!(archived.groups.len(), batch.groups.len());
    }

    #[test]
    fn other_messages_round_trip(
        node_id in "[a-z0-9-]{1,40}", replica in any::<u64>(), caps in any::<u64>(),
        origins in prop::collection::vec((any::<u64>(), any::<u32>(), any::<u64>()), 0..10),
        request_id in any::<u64>(), (index, total) in (1..u32::MAX).prop_flat_map(|t| (0..t, Just(t))), batch in batch_strategy(),
    ) {
        let hello = Hello {
            node_id, replica_id: replica, protocol_version: u32::from(wire::PROTOCOL_MAJOR) << 16, capabilities: caps,
            gossip_addr: format!("10.0.{}.{}:10101", replica % 256, caps % 256),
            link_nonce: replica ^ caps,
        };
        let bytes = wire::encode(&hello).unwrap();
        let Ok(Frame::Hello(h)) = wire::decode(&bytes) else { panic!() };
        prop_assert_eq!(rkyv::deserialize::<Hello, rancor::Error>(h).unwrap(), hello);

        let digest = Digest {
            sender: replica,
            first: caps.min(replica),
            last: caps.max(replica),
            origins: origins.iter().map(|&(origin, entries, fingerprint)| OriginDigest { origin, entries, fingerprint }).collect(),
            floors: origins.len() as u32,
            floor_fingerprint: caps ^ replica,
        };
        let bytes = wire::encode(&digest).unwrap();
        let Ok(Frame::Digest(d)) = wire::decode(&bytes) else { panic!() };
        prop_assert_eq!(rkyv::deserialize::<Digest, rancor::Error>(d).unwrap(), digest);

        let request = StateRequest { sender: replica, request_id, origins: origins.iter().map(|o| o.0).collect(), rests: caps & 1 == 1 };
        let bytes = wire::encode(&request).unwrap();
        let Ok(Frame::StateRequest(r)) = wire::decode(&bytes) else { panic!() };
        prop_assert_eq!(rkyv::deserialize::<StateRequest, rancor::Error>(r).unwrap(), request);

        let chunk = StateChunk { sender: replica, request_id, groups: batch.groups, index, total };
        let bytes = wire::encode(&chunk).unwrap();
        let Ok(Frame::StateChunk(c)) = wire::decode(&bytes) else { panic!() };
        prop_assert_eq!(rkyv::deserialize::<StateChunk, rancor::Error>(c).unwrap(), chunk);
    }

    /// Any corruption of a valid frame gives a frame or a typed error, never a panic.
    #[test]
    fn corrupted_frames_never_panic(batch in batch_strategy(), flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8), cut in any::<usize>()) {
        let mut frame = wire::encode(&batch).unwrap();
        for (at, byte) in flips {
            let i = at % frame.len();
            frame[i] ^= byte;
        }
        let _ = wire::decode(&frame);
        let _ = wire::decode(&frame[..cut % (frame.len() + 1)]);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = wire::decode(&bytes);
        // Also with a valid-looking header in front.
        let mut framed = b"BF\x01\x02".to_vec();
        framed.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        framed.extend_from_slice(&bytes);
        let _ = wire::decode(&framed);
    }

    /// The packer's estimate bounds the real encoded size, and is not wildly loose.
    #[test]
    fn packed_batches_fit_their_budget(entries in prop::collection::vec((0u64..4, entry_strategy()), 1..300), budget in 300usize..1500) {
        let mut packer = BatchPacker::new(budget);
        let mut frames = Vec::new();
        let mut seen = 0;
        let mut emit = |groups: Vec<OriginGroup>, frames: &mut Vec<Vec<u8>>| {
            seen += groups.iter().map(|g| g.entries.len()).sum::<usize>();
            frames.push(wire::encode(&DeltaBatch { sender: u64::MAX, sequence: u64::MAX, sent_at_ms: u64::MAX, groups }).unwrap());
        };
        for (origin, entry) in entries.clone() {
            if let Some(groups) = packer.push(origin, entry) { emit(groups, &mut frames); }
        }
        if let Some(groups) = packer.finish() { emit(groups, &mut frames); }
        prop_assert_eq!(seen, entries.len(), "every entry is packed exactly once");
        for frame in &frames {
            prop_assert!(frame.len() <= budget, "frame of {} bytes over a budget of {}", frame.len(), budget);
        }
        let total: usize = frames.iter().map(Vec::len).sum();
        prop_assert!(frames.len() == 1 || total * 10 >= budget * (frames.len() - 1) * 6, "packing is at least 60% full");
    }
}

fn valid_batch() -> Vec<u8> {
    let entry = Entry {
        key: "k".into(),
        window: WireWindow::from(Window::parse("1m").unwrap()),
        epoch: 1,
        value: 2,
    };
    wire::encode(&DeltaBatch {
        sender: 1,
        sequence: 1,
        sent_at_ms: 0,
        groups: vec![OriginGroup {
            origin: 1,
            kind: OriginKind::Replica,
            entries: vec![entry],
        }],
    })
    .unwrap()
}

#[test]
fn header_errors_are_typed() {
    let frame = valid_batch();
    assert_eq!(
        wire::decode(&frame[..5]).unwrap_err(),
        WireError::TooShort {
            len: 5,
            header: HEADER_LEN
        }
    );
    let mut bad = frame.clone();
    bad[0] = b'X';
    assert!(matches!(
        wire::decode(&bad),
        Err(WireError::BadMagic { .. })
    ));
    let mut bad = frame.clone();
    bad[2] = 9;
    let err = wire::decode(&bad).unwrap_err();
    assert_eq!(
        err,
        WireError::UnsupportedVersion {
            major: 9,
            supported: wire::PROTOCOL_MAJOR
        }
    );
    assert!(
        err.to_string()
            .contains("unsupported protocol major version 9")
    );
    let mut bad = frame.clone();
    bad[3] = 200;
    assert_eq!(wire::decode(&bad).unwrap_err(), WireError::UnknownKind(200));
    let mut bad = frame.clone();
    bad.push(0);
    assert!(matches!(
        wire::decode(&bad),
        Err(WireError::LengthMismatch { .. })
    ));
    // A valid header over a truncated archive fails validation.
    let mut bad = frame[..frame.len() - 4].to_vec();
    let len = (bad.len() - HEADER_LEN) as u32;
    bad[4..8].copy_from_slice(&len.to_le_bytes());
    assert!(matches!(wire::decode(&bad), Err(WireError::Invalid(_))));
    // Kind says Hello but the archive is a batch: validation guarantees safe access, not meaning. The bytes may
    // even form a structurally valid Hello; what matters is a typed result and no panic.
    let mut bad = frame;
    bad[3] = 1;
    let _ = wire::decode(&bad);
    // A state chunk placed outside its own answer is refused with both numbers named.
    for (index, total) in [(1, 1), (0, 0), (7, 3)] {
        let chunk = StateChunk {
            sender: 1,
            request_id: 1,
            groups: Vec::new(),
            index,
            total,
        };
        let err = wire::decode(&wire::encode(&chunk).unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("invalid archive: state chunk {index} of an answer of {total} chunks")
        );
    }
}

#[test]
fn limits_are_enforced() {
    let window = WireWindow::from(Window::parse("1m").unwrap());
    let entry = |key: String| Entry {
        key,
        window,
        epoch: 1,
        value: 1,
    };
    let batch = |entries| DeltaBatch {
        sender: 1,
        sequence: 1,
        sent_at_ms: 0,
        groups: vec![OriginGroup {
            origin: 1,
            kind: OriginKind::Replica,
            entries,
        }],
    };
    let long = wire::encode(&batch(vec![entry("k".repeat(5000))])).unwrap();
    assert_eq!(
        wire::decode(&long).unwrap_err(),
        WireError::KeyTooLong {
            len: 5000,
            max: 4096
        }
    );
    let many = wire::encode(&batch(
        (0..MAX_ENTRIES_PER_FRAME + 1)
            .map(|_| entry("k".into()))
            .collect(),
    ))
    .unwrap();
    assert!(matches!(
        wire::decode(&many),
        Err(WireError::TooManyEntries { .. })
    ));
    let bad_window = DeltaBatch {
        sender: 1,
        sequence: 1,
        sent_at_ms: 0,
        groups: vec![OriginGroup {
            origin: 1,
            kind: OriginKind::Replica,
            entries: vec![Entry {
                key: "k".into(),
                window: WireWindow {
                    count: 1,
                    unit: 5,
                    alignment: 0,
                    phase_ms: 0,
                },
                epoch: 1,
                value: 1,
            }],
        }],
    };
    let err = wire::decode(&wire::encode(&bad_window).unwrap()).unwrap_err();
    assert!(matches!(err, WireError::BadWindow(_)), "{err}");
    // Anchored windows: months refused, and only a canonical phase (below the length; 0 when not anchored).
    for (unit, alignment, phase_ms) in [
        (5, 2, 0),
        (3, 2, 86_400_000),
        (3, 0, 5),
        (3, 1, 5),
        (3, 3, 0),
    ] {
        let mut frame = bad_window.clone();
        frame.groups[0].entries[0].window = WireWindow {
            count: 1,
            unit,
            alignment,
            phase_ms,
        };
        let err = wire::decode(&wire::encode(&frame).unwrap()).unwrap_err();
        assert!(
            matches!(err, WireError::BadWindow(_)),
            "{unit} {alignment} {phase_ms}: {err}"
        );
    }
    let huge = wire::encode(&batch(
        (0..40_000).map(|i| entry(format!("key-{i:040}"))).collect(),
    ));
    assert!(matches!(huge, Err(WireError::TooLarge { .. })));
}
