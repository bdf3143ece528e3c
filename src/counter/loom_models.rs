//! loom models of the lock-free cell. Run with
//! `RUSTFLAGS="--cfg bifrost_loom" cargo test --release --lib counter::loom_models`.
//!
//! Each model explores every interleaving of a few threads on one cell and checks one guarantee of the cell's
//! module docs.

use loom::sync::Arc;
use loom::thread;

use super::cell::{AddOutcome, Cell, FastTake};
use super::window::Window;

fn cell() -> Arc<Cell> {
    Arc::new(Cell::new(
        "k".into(),
        Window::parse("1s").expect("valid window"),
    ))
}

/// Concurrent adds to one epoch are all counted.
#[test]
fn concurrent_adds_are_exact() {
    loom::model(|| {
        let c = cell();
        let c2 = Arc::clone(&c);
        let t = thread::spawn(move || c2.add(0, 1));
        let a = c.add(0, 2);
        let b = t.join().expect("thread");
        assert_eq!((a, b), (AddOutcome::Added, AddOutcome::Added));
        assert_eq!(c.local(0), 3);
    });
}

/// A late add of 10 to epoch 0 (`late_add`, describing its outcome) racing with an add of 100 that rolls the
/// same ring position to epoch 4: the late add is counted in its own epoch or refused (or, on the fast path,
/// declined); it never leaks into the newer epoch, and the newer epoch's add is never lost.
fn late_add_racing_a_roll(late_add: fn(&Cell) -> String) {
    loom::model(move || {
        let c = cell();
        c.add(0, 1); // the position holds epoch 0
        let c2 = Arc::clone(&c);
        let late = thread::spawn(move || late_add(&c2));
        let fresh = c.add(4, 100); // same position, four epochs later
        let late = late.join().expect("thread");
        assert_eq!(fresh, AddOutcome::Added);
        assert_eq!(
            c.local(4),
            100,
            "late add leaked into the new epoch: {late}"
        );
    });
}

#[test]
fn add_racing_a_roll_never_leaks_into_the_new_epoch() {
    late_add_racing_a_roll(|c| format!("{:?}", c.add(0, 10)));
}

/// The leaf fast path, the same race.
#[test]
fn fast_add_racing_a_roll_never_leaks_into_the_new_epoch() {
    late_add_racing_a_roll(|c| format!("fast path counted: {}", c.try_add_fast(0, 10)));
}

/// The dirty handshake with the leaf fast path (CAS, then the flag load): a counted add is either seen by the
/// drain that clears the flag, or sees the cleared flag and queues the cell again.
#[test]
fn fast_add_dirty_handshake_never_strands_an_add() {
    loom::model(|| {
        let c = cell();
        c.add(0, 1); // the slot holds epoch 0, so the fast path applies
        assert!(c.mark_dirty());
        let c2 = Arc::clone(&c);
        let adder = thread::spawn(move || {
            let counted = c2.try_add_fast(0, 1);
            (counted, counted && !c2.is_dirty())
        });
        c.clear_dirty();
        let drained = c.local(0);
        let (counted, requeues) = adder.join().expect("thread");
        assert!(
            counted,
            "nothing else touches the word: the fast path applies"
        );
        assert!(
            drained == 2 || requeues,
            "add neither drained nor re-queued"
        );
    });
}

/// Two fast-path takes racing for the last unit of a limit: at most one is taken, and the count says so.
#[test]
fn fast_takes_never_overshoot_a_limit() {
    loom::model(|| {
        let c = cell();
        c.add(0, 1); // the slot holds epoch 0; one unit of a limit of 2 is used
        let c2 = Arc::clone(&c);
        let t = thread::spawn(move || c2.try_take_fast(0, 1, 2));
        let a = c.try_take_fast(0, 1, 2);
        let b = t.join().expect("thread");
        let taken = [a, b]
            .iter()
            .filter(|o| matches!(o, Some(FastTake::Taken { .. })))
            .count();
        assert!(taken <= 1, "both took the last unit: {a:?} {b:?}");
        assert_eq!(c.local(0), 1 + taken as u64);
    });
}

/// Two threads rolling the same position to the same new epoch both count.
#[test]
fn concurrent_rolls_keep_every_add() {
    loom::model(|| {
        let c = cell();
        c.add(0, 1);
        let c2 = Arc::clone(&c);
        let t = thread::spawn(move || c2.add(4, 1));
        c.add(4, 2);
        t.join().expect("thread");
        assert_eq!(c.local(4), 3);
        assert_eq!(c.local(0), 0);
    });
}

/// The dirty handshake: an add is either seen by the drain that clears the flag, or re-marks the cell so the
/// next drain sees it. No change is stranded.
#[test]
fn dirty_handshake_never_strands_an_add() {
    loom::model(|| {
        let c = cell();
        assert!(c.mark_dirty()); // the cell sits in the dirty queue
        let c2 = Arc::clone(&c);
        let adder = thread::spawn(move || {
            c2.add(0, 1);
            c2.mark_dirty() // true: this adder must enqueue the cell again
        });
        // The drain: pop (implicit), clear, read.
        c.clear_dirty();
        let drained = c.local(0);
        let requeued = adder.join().expect("thread");
        assert!(
            drained == 1 || requeued,
            "add neither drained nor re-queued"
        );
    });
}

/// Retiring an idle cell and adding to it concurrently: exactly one wins. If the cell is retired the add was
/// refused (nothing lost into a cell about to be freed); if the add counted, the cell was not retired.
#[test]
fn retire_and_add_exclude_each_other() {
    loom::model(|| {
        let c = cell();
        c.add(0, 1); // idle by the time epoch 8 is current
        let c2 = Arc::clone(&c);
        let adder = thread::spawn(move || c2.add(8, 1));
        let retired = c.try_retire(5);
        let added = adder.join().expect("thread");
        if retired {
            assert_eq!(added, AddOutcome::Stale);
            assert!(c.is_retired());
        } else {
            assert_eq!(added, AddOutcome::Added);
            assert_eq!(c.local(8), 1);
        }
    });
}

/// A handle registered concurrently with a retire: never both.
#[test]
fn retire_and_handle_registration_exclude_each_other() {
    loom::model(|| {
        let c = cell();
        let c2 = Arc::clone(&c);
        let registrar = thread::spawn(move || c2.register_handle());
        let retired = c.try_retire(5);
        let registered = registrar.join().expect("thread");
        assert!(!(retired && registered), "a handle to a retired cell");
        assert!(retired || registered || c.is_retired() == retired);
    });
}

/// The dirty handshake when the add also rolls its ring position from an older epoch (not an empty slot): the
/// roll is part of the handshake, so the drain sees the new epoch or the adder re-queues the cell.
#[test]
fn dirty_handshake_with_a_roll_never_strands_an_add() {
    loom::model(|| {
        let c = cell();
        c.add(0, 1); // position 0 holds epoch 0
        assert!(c.mark_dirty()); // queued for that add
        let c2 = Arc::clone(&c);
        let adder = thread::spawn(move || {
            c2.add(4, 1); // a new window, same position: rolls it
            c2.mark_dirty()
        });
        c.clear_dirty();
        let drained: Vec<(u64, u64)> = c.local_values(1).collect();
        let requeued = adder.join().expect("thread");
        assert!(
            drained == vec![(4, 1)] || requeued,
            "add in the new window neither drained nor re-queued"
        );
    });
}

/// Cloning a handle while a reclaimer retires the cell: the clone registers without a check, the retire fails
/// and is undone, and the count of handles stays exact.
#[test]
fn handle_clone_during_a_retire_keeps_the_cell() {
    loom::model(|| {
        let c = cell();
        assert!(c.register_handle()); // a live handle
        c.release_handle(); // ... which the pre-check will not see: simulate it appearing right after
        let c2 = Arc::clone(&c);
        let holder = thread::spawn(move || {
            if c2.register_handle() {
                c2.register_clone();
                c2.release_handle();
                true
            } else {
                false
            }
        });
        let retired = c.try_retire(5);
        let registered = holder.join().expect("thread");
        assert!(!(retired && registered));
        if registered {
            assert!(!c.is_retired(), "a cell with a live handle stays");
            assert_eq!(c.add(8, 1), AddOutcome::Added);
        }
    });
}
