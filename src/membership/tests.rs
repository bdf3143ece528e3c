//! Unit tests of the membership state machine, driven directly (the multi-node scenarios run on the
//! whole-node simulator, `crate::sim`, in `tests/membership_*.rs`).

use std::net::SocketAddr;

use super::*;

const T0: u64 = 1_795_514_400_000;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn swim_only() -> MembershipOptions {
    MembershipOptions {
        health: HealthOptions {
            require_data_plane: false,
            ..HealthOptions::default()
        },
        ..MembershipOptions::default()
    }
}

fn node(name: &str, port: u16, seed: u64) -> Membership {
    Membership::new(
        LocalIdentity::new(name, ReplicaId::new(seed), addr(port)),
        swim_only(),
        seed,
        T0,
    )
    .expect("valid")
}

/// Delivers every queued payload between the two nodes until both are quiet (no loss, no latency).
fn pump(a: &mut Membership, b: &mut Membership, now: u64) {
    for _ in 0..100 {
        let mut moved = false;
        while let Some((to, bytes)) = a.poll_transmit() {
            moved = true;
            if to == b.local_id().addr() {
                let _ = b.handle_packet(a.local_id().addr(), &bytes, now);
            }
        }
        while let Some((to, bytes)) = b.poll_transmit() {
            moved = true;
            if to == a.local_id().addr() {
                let _ = a.handle_packet(b.local_id().addr(), &bytes, now);
            }
        }
        if !moved {
            return;
        }
    }
}

fn drain(m: &mut Membership) -> Vec<MembershipEvent> {
    std::iter::from_fn(|| m.poll_event()).collect()
}

#[test]
fn construction_checks_identity_and_options() {
    let bad = Membership::new(
        LocalIdentity::new("", ReplicaId::new(1), addr(1)),
        swim_only(),
        1,
        T0,
    );
    assert!(matches!(bad, Err(MembershipError::InvalidIdentity(_))));
    let long = "x".repeat(MAX_NODE_ID_BYTES + 1);
    let bad = Membership::new(
        LocalIdentity::new(long, ReplicaId::new(1), addr(1)),
        swim_only(),
        1,
        T0,
    );
    assert!(matches!(bad, Err(MembershipError::InvalidIdentity(_))));
    let opts = MembershipOptions {
        max_packet_size: 10,
        ..swim_only()
    };
    let bad = Membership::new(
        LocalIdentity::new("a", ReplicaId::new(1), addr(1)),
        opts,
        1,
        T0,
    );
    assert!(
        matches!(bad, Err(MembershipError::InvalidOptions(m)) if m.to_string().contains("max_packet_size"))
    );
}

#[test]
fn two_nodes_join_and_publish_a_table() {
    let mut a = node("a", 1, 1);
    let mut b = node("b", 2, 2);
    assert_eq!(
        a.cluster_health(),
        ClusterHealth::Healthy,
        "a one-node cluster"
    );
    b.join(a.local_id().addr(), T0).expect("join");
    assert_eq!(
        b.cluster_health(),
        ClusterHealth::NotHealthy,
        "expects a cluster now"
    );
    pump(&mut a, &mut b, T0 + 1);
    assert!(a.is_joined() && b.is_joined());
    let eb = drain(&mut b);
    assert!(eb.contains(&MembershipEvent::Joined { peers: 1 }), "{eb:?}");
    assert!(eb.contains(&MembershipEvent::MemberUp(a.local_id().clone())));
    assert!(eb.contains(&MembershipEvent::ClusterHealthChanged(
        ClusterHealth::Healthy
    )));
    let table = b.members();
    assert_eq!(table.members.len(), 1);
    let m = &table.members[0];
    assert_eq!(m.node_id(), "a");
    assert_eq!(m.state, MemberState::Alive);
    assert!(m.healthy);
    assert_eq!(m.last_seen_ms, Some(T0 + 1));
    assert_eq!(table.cluster_health, ClusterHealth::Healthy);
    assert_eq!(table.healthy_count(), 2);
    // The reader sees the same snapshot without the state machine.
    assert_eq!(*b.reader().load(), *table);
}

#[test]
fn bad_input_is_refused_without_panic_or_state_change() {
    let mut a = node("a", 1, 1);
    let before = a.members();
    let from = addr(9);
    assert!(matches!(
        a.handle_packet(from, &[], T0),
        Err(MembershipError::Malformed { .. })
    ));
    assert!(matches!(
        a.handle_packet(from, &[7, 1, 2, 3], T0),
        Err(MembershipError::Malformed { .. })
    ));
    assert!(matches!(
        a.handle_packet(from, &vec![1u8; 5_000], T0),
        Err(MembershipError::PacketTooLarge { len: 5_000, .. })
    ));
    // Every prefix and many mutations of a real payload.
    let mut b = node("b", 2, 2);
    b.join(addr(1), T0).expect("join");
    let (_, real) = b.poll_transmit().expect("announce");
    for cut in 0..real.len() {
        let _ = a.handle_packet(from, &real[..cut], T0);
    }
    assert_eq!(a.members().members, before.members);
    // Mutations may decode into other (forged) identities: the transport's mutual TLS is what keeps
    // strangers out. Here only "no panic" is checked.
    for pos in 0..real.len() {
        let mut junk = real.clone();
        junk[pos] ^= 0xA5;
        let _ = a.handle_packet(from, &junk, T0);
    }
    assert!(a.stats().packets_rejected >= 3);
}

#[test]
fn join_self_and_calls_after_leave_are_refused() {
    let mut a = node("a", 1, 1);
    assert_eq!(a.join(addr(1), T0), Err(MembershipError::JoinSelf(addr(1))));
    a.leave(T0).expect("leave");
    assert_eq!(a.local_state(), LocalState::Left);
    assert_eq!(a.join(addr(2), T0), Err(MembershipError::Left));
    assert_eq!(
        a.handle_packet(addr(2), &[1], T0),
        Err(MembershipError::Left)
    );
    assert_eq!(
        a.record_data_plane(ReplicaId::new(7), true, "", T0),
        Err(MembershipError::Left)
    );
    assert_eq!(a.poll_timeout(), None);
    assert_eq!(a.leave(T0), Ok(()), "leaving twice is a no-op");
    assert_eq!(a.cluster_health(), ClusterHealth::NotHealthy);
}

#[test]
fn data_plane_reports_name_known_active_members() {
    let mut a = node("a", 1, 1);
    let mut b = node("b", 2, 2);
    b.join(addr(1), T0).expect("join");
    pump(&mut a, &mut b, T0);
    assert_eq!(
        a.record_data_plane(ReplicaId::new(99), true, "", T0),
        Err(MembershipError::UnknownMember(MemberRef::Replica(
            ReplicaId::new(99)
        )))
    );
    a.record_data_plane(ReplicaId::new(2), false, "refused", T0)
        .expect("by replica id");
    a.record_data_plane(addr(2), true, "", T0)
        .expect("by address");
}

/// A tiny lock-step network: every 50 ms run due timers, then deliver everything at once (no loss).
fn run(nodes: &mut [Membership], from_ms: u64, to_ms: u64) {
    let mut t = from_ms;
    while t <= to_ms {
        for n in nodes.iter_mut() {
            if n.poll_timeout().is_some_and(|d| d <= t) {
                n.handle_timeout(t);
            }
        }
        for _ in 0..50 {
            let mut queued = Vec::new();
            for n in nodes.iter_mut() {
                let from = n.local_id().addr();
                while let Some((to, bytes)) = n.poll_transmit() {
                    queued.push((from, to, bytes));
                }
            }
            if queued.is_empty() {
                break;
            }
            for (from, to, bytes) in queued {
                if let Some(n) = nodes.iter_mut().find(|n| n.local_id().addr() == to) {
                    let _ = n.handle_packet(from, &bytes, t);
                }
            }
        }
        t += 50;
    }
}

#[test]
fn a_node_restarted_at_a_new_address_takes_over_once_its_old_identity_is_down() {
    let mut nodes = vec![node("a", 1, 1), node("b", 2, 2), node("c", 3, 3)];
    for n in &mut nodes[1..] {
        n.join(addr(1), T0).expect("join");
    }
    run(&mut nodes, T0, T0 + 5_000);
    let old_c = nodes[2].local_id().clone();
    assert_eq!(
        nodes[0].state_of(addr(3)).map(|v| v.1),
        Some(MemberState::Alive)
    );
    // c's process dies and comes back at another address (a new pod IP) before anyone noticed.
    nodes[2] = Membership::new(
        LocalIdentity::new("c", ReplicaId::new(33), addr(13)),
        swim_only(),
        33,
        T0 + 5_000,
    )
    .expect("valid");
    nodes[2].join(addr(1), T0 + 5_000).expect("join");
    for n in nodes.iter_mut() {
        drain(n);
    }
    // While the old identity still counts as live, the new process is held back as a duplicate.
    run(&mut nodes, T0 + 5_000, T0 + 6_000);
    for n in &nodes[..2] {
        assert_eq!(n.refused_by(addr(13)), Some(&old_c));
        assert!(n.members().by_replica(ReplicaId::new(33)).is_none());
        assert!(n.members().is_refused(ReplicaId::new(33)));
    }
    assert_eq!(nodes[2].local_refused_by(), Some(&old_c));
    // The old process does not answer: once it is declared down (suspicion min 4 s at N = 3), the new one
    // takes over everywhere, and the old identity is shown replaced (left), not down.
    run(&mut nodes, T0 + 6_000, T0 + 20_000);
    for (i, n) in nodes[..2].iter_mut().enumerate() {
        let (id, st) = n.state_of(addr(13)).expect("new c known");
        assert_eq!(
            (id.replica_id(), st),
            (ReplicaId::new(33), MemberState::Alive)
        );
        assert_eq!(n.refused_by(addr(13)), None);
        let (_, old_st) = n.state_of(addr(3)).expect("old c remembered");
        assert_eq!(old_st, MemberState::Left, "node {i}");
        let events = drain(n);
        assert!(
            events.iter().any(|e| matches!(e, MembershipEvent::MemberReplaced { old, new } if *old == old_c && new.replica_id() == ReplicaId::new(33))),
            "node {i}: {events:?}"
        );
        assert!(
            events
                .iter()
                .any(|e| matches!(e, MembershipEvent::MemberUp(new) if new.replica_id() == ReplicaId::new(33))),
            "node {i}: {events:?}"
        );
        assert_eq!(n.cluster_health(), ClusterHealth::Healthy);
    }
    assert_eq!(nodes[2].local_refused_by(), None);
    let events = drain(&mut nodes[2]);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, MembershipEvent::DuplicateCleared { holder } if *holder == old_c)),
        "{events:?}"
    );
    assert_eq!(nodes[2].cluster_health(), ClusterHealth::Healthy);
}

#[test]
fn a_second_live_process_with_a_members_node_id_is_refused_and_the_member_stays() {
    let mut nodes = vec![node("a", 1, 1), node("b", 2, 2), node("c", 3, 3)];
    for n in &mut nodes[1..] {
        n.join(addr(1), T0).expect("join");
    }
    run(&mut nodes, T0, T0 + 5_000);
    let real_c = nodes[2].local_id().clone();
    for n in nodes.iter_mut() {
        drain(n);
    }
    // A second process, started later with c's node id at another address, while c runs on.
    let mut dup = Membership::new(
        LocalIdentity::new("c", ReplicaId::new(44), addr(14)),
        swim_only(),
        44,
        T0 + 5_000,
    )
    .expect("valid");
    dup.join(addr(2), T0 + 5_000).expect("join");
    nodes.push(dup);
    // Much longer than the suspicion timeouts (4 s min, 24 s max at N = 3).
    run(&mut nodes, T0 + 5_000, T0 + 40_000);
    let dup_id = nodes[3].local_id().clone();
    for (i, n) in nodes[..3].iter_mut().enumerate() {
        assert_eq!(n.refused_by(addr(14)), Some(&real_c), "node {i}");
        let table = n.members();
        assert!(
            table
                .refused
                .iter()
                .any(|r| r.id == dup_id && r.holder == real_c)
        );
        assert!(
            table
                .members
                .iter()
                .all(|m| m.replica_id() != ReplicaId::new(44)),
            "node {i}"
        );
        assert_eq!(table.member_count(), 3, "node {i}");
        assert_eq!(table.healthy_count(), 3, "node {i}");
        assert_eq!(n.cluster_health(), ClusterHealth::Healthy, "node {i}");
        assert!(matches!(
            n.record_data_plane(ReplicaId::new(44), true, "", T0 + 40_000),
            Err(MembershipError::RefusedDuplicate(_))
        ));
        let events = drain(n);
        let refusals = events
            .iter()
            .filter(|e| matches!(e, MembershipEvent::DuplicateRefused { duplicate, holder } if *duplicate == dup_id && *holder == real_c))
            .count();
        assert_eq!(refusals, 1, "node {i}: {events:?}");
        for e in &events {
            match e {
                MembershipEvent::MemberUp(x)
                | MembershipEvent::MemberSuspect(x)
                | MembershipEvent::MemberDown(x)
                | MembershipEvent::MemberLeft(x)
                    if x.node_id() == "c" =>
                {
                    panic!("node {i}: {e:?}")
                }
                MembershipEvent::MemberReplaced { .. }
                | MembershipEvent::ClusterHealthChanged(_) => {
                    panic!("node {i}: {e:?}")
                }
                _ => {}
            }
        }
        if i != 2 {
            let (id, st) = n.state_of(addr(3)).expect("real c");
            assert_eq!((id, st), (&real_c, MemberState::Alive), "node {i}");
            assert_eq!(n.health_of(addr(3)).map(|h| h.0), Some(true), "node {i}");
        }
    }
    // The duplicate knows it is one, and is not healthy.
    assert_eq!(nodes[3].local_refused_by(), Some(&real_c));
    assert_eq!(nodes[3].members().local.refused_by.as_ref(), Some(&real_c));
    assert_eq!(nodes[3].cluster_health(), ClusterHealth::NotHealthy);
    let events = drain(&mut nodes[3]);
    assert_eq!(
        events
            .iter()
            .filter(
                |e| matches!(e, MembershipEvent::RefusedAsDuplicate { holder } if *holder == real_c)
            )
            .count(),
        1,
        "{events:?}"
    );
    // The real c leaves: the waiting process takes the node id over at once.
    nodes[2].leave(T0 + 40_000).expect("leave");
    run(&mut nodes, T0 + 40_000, T0 + 42_000);
    for (i, n) in [0, 1].into_iter().map(|i| (i, &nodes[i])) {
        assert_eq!(n.refused_by(addr(14)), None, "node {i}");
        assert_eq!(
            n.state_of(addr(14)).map(|(id, st)| (id.replica_id(), st)),
            Some((ReplicaId::new(44), MemberState::Alive))
        );
    }
    assert_eq!(nodes[3].local_refused_by(), None);
}

#[test]
fn state_machine_and_reader_can_move_across_threads() {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync>() {}
    send::<Membership>();
    send_sync::<MembershipReader>();
    send_sync::<MemberTable>();
}

#[test]
fn a_member_entering_the_data_plane_scope_owes_answers_from_then_on() {
    // With the data plane required, a node whose scope names only b checks b's data plane; c and d owe it no
    // answers and are healthy while SWIM has them alive. Once c enters the scope, its silence counts: three
    // timeouts of 2 s after it entered. (The whole-node scenario in tests/membership_health.rs gets its scope
    // from a grouped layout; this one changes the scope by hand.)
    let options = MembershipOptions {
        health: HealthOptions {
            timeout_ms: 2_000,
            success_threshold: 1,
            failure_threshold: 3,
            require_data_plane: true,
        },
        ..MembershipOptions::default()
    };
    let member = |name: &str, port: u16| {
        Membership::new(
            LocalIdentity::new(name, ReplicaId::new(u64::from(port)), addr(port)),
            options.clone(),
            u64::from(port),
            T0,
        )
        .expect("valid")
    };
    let mut nodes = vec![
        member("a", 1),
        member("b", 2),
        member("c", 3),
        member("d", 4),
    ];
    for n in &mut nodes[1..] {
        n.join(addr(1), T0).expect("join");
    }
    run(&mut nodes, T0, T0 + 5_000);
    let mut t = T0 + 5_000;
    nodes[0].set_data_plane_scope(Some([ReplicaId::new(2)].into_iter().collect()), t);
    // Every 500 ms, b answers a's data-plane check; c and d are never checked.
    let answered = |nodes: &mut [Membership], from: u64, to: u64| {
        let mut t = from;
        while t < to {
            nodes[0]
                .record_data_plane(addr(2), true, "", t)
                .expect("b is a member");
            run(nodes, t, t + 450);
            t += 500;
        }
    };
    answered(&mut nodes, t, t + 10_000);
    t += 10_000;
    for port in [2, 3, 4] {
        assert_eq!(
            nodes[0].health_of(addr(port)).map(|h| h.0),
            Some(true),
            "member at port {port}"
        );
    }
    assert_eq!(nodes[0].cluster_health(), ClusterHealth::Healthy);
    nodes[0].set_data_plane_scope(Some([2, 3].into_iter().map(ReplicaId::new).collect()), t);
    let entered = t;
    let mut became_unhealthy = None;
    while t < entered + 10_000 {
        answered(&mut nodes, t, t + 500);
        t += 500;
        if became_unhealthy.is_none() && nodes[0].health_of(addr(3)).is_some_and(|h| !h.0) {
            became_unhealthy = Some(t - entered);
        }
    }
    let after = became_unhealthy.expect("c never turned unhealthy once in the scope");
    assert!(
        (6_000..=6_500).contains(&after),
        "unhealthy after {after} ms"
    );
    assert_eq!(
        nodes[0].health_of(addr(4)).map(|h| h.0),
        Some(true),
        "d, outside, stays healthy"
    );
    assert_eq!(
        nodes[0].health_of(addr(2)).map(|h| h.0),
        Some(true),
        "b answers"
    );
}
