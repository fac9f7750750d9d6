//! The team and its regions against independently counted results: every task index runs
//! exactly once, on a team or on rayon, whatever the pool.

use super::*;

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool")
}

/// Every task runs exactly once, with and without a team, for pools of 1 to 4 threads and
/// many consecutive regions (followers join late, regions open and close quickly).
#[test]
fn every_task_runs_exactly_once() {
    for n in 1..=4 {
        pool(n).install(|| {
            let counts: Vec<AtomicUsize> = (0..257).map(|_| AtomicUsize::new(0)).collect();
            let regions = |counts: &[AtomicUsize]| {
                for tasks in (0..=257).step_by(8).chain([1, 2, 3]) {
                    for_each(tasks, |i| {
                        counts[i].fetch_add(1, Ordering::Relaxed);
                    });
                }
            };
            regions(&counts);
            let expected: Vec<usize> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
            for (i, &e) in expected.iter().enumerate() {
                // Independently: the number of regions with more than `i` tasks.
                let want = (0..=257)
                    .step_by(8)
                    .chain([1, 2, 3])
                    .filter(|&t| t > i)
                    .count();
                assert_eq!(e, want, "task {i}, {n} threads, no team");
            }
            for c in &counts {
                c.store(0, Ordering::Relaxed);
            }
            with_team(|| {
                assert_eq!(is_leading(), n > 1);
                assert_eq!(threads(), n);
                for _ in 0..50 {
                    regions(&counts);
                }
            });
            for (i, c) in counts.iter().enumerate() {
                assert_eq!(
                    c.load(Ordering::Relaxed),
                    50 * expected[i],
                    "task {i}, {n} threads, team"
                );
            }
        });
    }
}

/// The followers do run tasks of a team's regions (else the team would be only its
/// leader, and every other test here would pass regardless).
#[test]
fn followers_run_tasks() {
    for n in [2, 3] {
        pool(n).install(|| {
            with_team(|| {
                let leader = rayon::current_thread_index();
                let others = AtomicUsize::new(0);
                for _ in 0..200 {
                    for_each(16, |_| {
                        let spin = std::time::Instant::now();
                        while spin.elapsed() < std::time::Duration::from_micros(50) {}
                        if rayon::current_thread_index() != leader {
                            others.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                    if others.load(Ordering::Relaxed) > 0 {
                        return;
                    }
                }
                panic!("no follower ran a task in 200 regions ({n} threads)");
            });
        });
    }
}

/// Many regions of two or three tasks in a row: a follower that reads the open region
/// just as the leader closes it and opens the next must neither run a closed region's
/// tasks nor run a task twice.
#[test]
fn quick_successive_regions() {
    for n in [2, 3] {
        pool(n).install(|| {
            let counts: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
            let sum = with_team(|| {
                let mut sum = 0;
                for r in 0..20_000usize {
                    let tasks = 2 + r % 2;
                    sum += run(
                        tasks,
                        || (),
                        |_, i| {
                            counts[i].fetch_add(1, Ordering::Relaxed);
                            i + 1
                        },
                        0,
                        |a, b| a + b,
                    );
                }
                sum
            });
            // Regions r even: tasks 0, 1 (sum 3); odd: 0, 1, 2 (sum 6).
            assert_eq!(sum, 10_000 * 3 + 10_000 * 6);
            let got: Vec<usize> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
            assert_eq!(got, [20_000, 20_000, 10_000], "{n} threads");
        });
    }
}

/// Chunks are the slice's consecutive `len`-element pieces, the last one short; the fold
/// sees every task's result once.
#[test]
fn chunks_cover_the_slice_and_fold_every_result() {
    for threads in [1, 2, 3] {
        pool(threads).install(|| {
            for (n, len) in [
                (0, 3),
                (1, 3),
                (10, 3),
                (12, 3),
                (1000, 7),
                (64, 64),
                (5, 100),
            ] {
                let check = || {
                    let mut data = vec![0usize; n];
                    let sum = chunks_mut(
                        &mut data,
                        len,
                        || 0usize,
                        |made, i, chunk| {
                            *made += 1;
                            for (j, d) in chunk.iter_mut().enumerate() {
                                *d = i * len + j + 1;
                            }
                            chunk.len()
                        },
                        0,
                        |a, b| a + b,
                    );
                    assert_eq!(sum, n, "{n} elements in chunks of {len}");
                    let want: Vec<usize> = (1..=n).collect();
                    assert_eq!(data, want, "{n} elements in chunks of {len}");
                };
                check();
                with_team(check);
            }
        });
    }
}

/// Inside a region, and on followers, regions run on rayon; a team inside a team is the
/// outer one.
#[test]
fn nested_regions_and_teams() {
    pool(2).install(|| {
        with_team(|| {
            let total = AtomicUsize::new(0);
            for_each(8, |_| {
                assert!(!is_leading());
                for_each(5, |_| {
                    total.fetch_add(1, Ordering::Relaxed);
                });
                with_team(|| total.fetch_add(100, Ordering::Relaxed));
            });
            assert_eq!(total.load(Ordering::Relaxed), 8 * 105);
            let outer = LEADING.with(Cell::get) as usize;
            assert_ne!(outer, 0);
            assert_eq!(with_team(|| LEADING.with(Cell::get) as usize), outer);
        });
        assert!(!is_leading());
    });
}

/// A task that panics, on the leader or on a follower, makes the region panic after every
/// member has left it; the team and the pool stay usable.
#[test]
fn a_panicking_task_propagates_and_the_team_recovers() {
    pool(2).install(|| {
        with_team(|| {
            for bad in [0, 1, 63] {
                let r = catch_unwind(AssertUnwindSafe(|| {
                    for_each(64, |i| {
                        if i == bad {
                            panic!("task {i} fails on purpose");
                        }
                        std::hint::black_box(i);
                    })
                }));
                assert!(r.is_err(), "task {bad} panicked, the region must too");
                let n = AtomicUsize::new(0);
                for_each(64, |_| {
                    n.fetch_add(1, Ordering::Relaxed);
                });
                assert_eq!(n.load(Ordering::Relaxed), 64);
            }
        });
        let r = catch_unwind(AssertUnwindSafe(|| with_team(|| panic!("the body fails"))));
        assert!(r.is_err());
        assert_eq!(with_team(|| 7), 7);
    });
}

/// Rayon code inside a team's closure still runs on several threads (the followers take
/// its jobs while they wait).
#[test]
fn rayon_inside_the_team_still_runs_in_parallel() {
    pool(2).install(|| {
        with_team(|| {
            let ids = Mutex::new(std::collections::BTreeSet::new());
            for _ in 0..200 {
                (0..64).into_par_iter().for_each(|_| {
                    let spin = std::time::Instant::now();
                    while spin.elapsed() < std::time::Duration::from_micros(20) {}
                    ids.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(rayon::current_thread_index());
                });
                if ids.lock().unwrap_or_else(|e| e.into_inner()).len() == 2 {
                    return;
                }
            }
            panic!("the followers never ran a rayon job");
        });
    });
}

/// `splits` takes the team's threshold on a team's leader and rayon's elsewhere.
#[test]
fn splits_uses_the_team_threshold_only_on_a_leader() {
    let rayon_min = crate::kernels::conv::PAR_ELEMS;
    assert!(!splits(TEAM_ELEMS) && splits(rayon_min));
    assert!(!splits(rayon_min - 1));
    pool(2).install(|| {
        with_team(|| {
            assert!(splits(TEAM_ELEMS) && !splits(TEAM_ELEMS - 1));
            // Inside a region the leader is not leading: rayon's threshold again.
            let inside = run(2, || (), |_, _| splits(TEAM_ELEMS), false, |a, b| a | b);
            assert!(!inside);
        });
    });
}
