//! Parallel regions of the kernels, and the team that runs them during one forward pass.
//!
//! A forward pass of the reduced-precision backbones is a chain of about a hundred short
//! parallel regions (0.05–0.5 ms each). On rayon alone, the other pool threads fall asleep
//! between two of them (after about 30 µs of looking for work) and are woken by a futex call
//! for the next: on a small virtual machine that is 7 % of the samples of an int8 forward pass.
//!
//! [`with_team`] runs a closure with a *team*: the calling pool thread leads, the pool's other
//! threads follow. A follower spins, between regions, on an epoch counter instead of
//! sleeping (it also runs rayon jobs it can steal meanwhile, so rayon code inside the closure
//! keeps its parallelism). The team exists only for that call; nothing is left running after
//! it, and no state outlives it.
//!
//! The kernels open regions with [`run`] and [`chunks_mut`]. On the leader of a team, a region
//! is handed to the team; anywhere else (no team, inside a region, on a follower) it runs on
//! rayon as before. Every task index is run exactly once either way, so results do not depend
//! on who runs a task.

use std::cell::Cell;
use std::marker::PhantomData;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;

/// The team a pool thread leads, and what its followers watch (on its own pair of cache
/// lines, away from the leader's other data).
#[repr(align(128))]
struct Team {
    /// Members: the leader and the followers it asked for (some may never join).
    members: usize,
    /// The open region (a `*const Region`), or null between regions.
    job: AtomicPtr<()>,
    /// Incremented when a region opens, so that a follower runs each region once.
    epoch: AtomicU64,
    /// Followers between reading `job` and leaving the region it points to.
    inside: AtomicUsize,
    /// Set when the leader's closure has returned (or unwound): followers leave.
    quit: AtomicBool,
}

/// One parallel region: the function each member runs (it claims tasks until none are left).
struct Region<'a> {
    member: &'a (dyn Fn() + Sync),
    /// A follower's member function panicked.
    panicked: AtomicBool,
}

thread_local! {
    /// The team this thread leads while it runs [`with_team`]'s closure, outside any region.
    static LEADING: Cell<*const Team> = const { Cell::new(std::ptr::null()) };
}

/// Sets [`LEADING`] for its lifetime, and restores the previous value when dropped (also on
/// unwinding).
struct Leading {
    previous: *const Team,
    /// Not `Send`: it must be dropped on the thread whose [`LEADING`] it changed.
    _thread: PhantomData<*const ()>,
}

impl Leading {
    fn set(team: *const Team) -> Leading {
        Leading {
            previous: LEADING.with(|l| l.replace(team)),
            _thread: PhantomData,
        }
    }
}

impl Drop for Leading {
    fn drop(&mut self) {
        LEADING.with(|l| l.set(self.previous));
    }
}

/// Calls `f` with the team this thread leads, if it is in [`with_team`]'s closure and not
/// inside a region.
fn with_leading<R>(f: impl FnOnce(Option<&Team>) -> R) -> R {
    let team = LEADING.with(Cell::get);
    // SAFETY: `LEADING` is non-null only while a `Leading` guard set by `with_team` is alive
    // on this thread, and `with_team` drops that guard before its `Team` goes out of scope.
    // `f` runs on this thread within the current call, so within `with_team`'s closure, while
    // the team is alive; the reference cannot outlive `f`.
    f(unsafe { team.as_ref() })
}

/// Whether this thread leads a team (outside a region).
fn is_leading() -> bool {
    !LEADING.with(Cell::get).is_null()
}

/// Elements from which a pass is split into parallel tasks on a team's leader: a region
/// there costs about a microsecond (the followers are spinning), not a thread's wake-up.
const TEAM_ELEMS: usize = 1 << 12;

/// Whether a pass over `elems` elements is worth splitting into parallel tasks: from
/// [`TEAM_ELEMS`] on a team's leader, else (rayon) from
/// [`PAR_ELEMS`](crate::kernels::conv::PAR_ELEMS).
pub(crate) fn splits(elems: usize) -> bool {
    let min = if is_leading() {
        TEAM_ELEMS
    } else {
        crate::kernels::conv::PAR_ELEMS
    };
    elems >= min
}

/// The number of threads a region should plan its tasks for: the team's members on a team's
/// leader, else the rayon pool's threads.
pub(crate) fn threads() -> usize {
    with_leading(|t| t.map_or_else(rayon::current_num_threads, |t| t.members))
}

/// Runs `body` with a team of the current rayon pool's threads (see the module docs), on a
/// pool thread. A pool of one thread, or a call from a team's leader, runs `body` directly.
pub(crate) fn with_team<R: Send>(body: impl FnOnce() -> R + Send) -> R {
    let members = rayon::current_num_threads();
    if members < 2 || is_leading() {
        return body();
    }
    let team = Team {
        members,
        job: AtomicPtr::new(std::ptr::null_mut()),
        epoch: AtomicU64::new(0),
        inside: AtomicUsize::new(0),
        quit: AtomicBool::new(false),
    };
    rayon::scope(|s| {
        let leader = rayon::current_thread_index();
        let team = &team;
        for _ in 1..members {
            s.spawn(move |_| {
                // A follower job that the leader runs itself (it pops its own deque when it
                // waits inside rayon) must not follow: it would wait for regions that only
                // this thread can open.
                if rayon::current_thread_index() != leader {
                    team.follow();
                }
            });
        }
        /// Tells the followers to leave when the closure returns or unwinds.
        struct Quit<'t>(&'t Team);
        impl Drop for Quit<'_> {
            fn drop(&mut self) {
                self.0.quit.store(true, Ordering::Release);
            }
        }
        let _quit = Quit(team);
        let _leading = Leading::set(team);
        body()
    })
}

impl Team {
    /// A follower's loop: run each region opened after joining, until the leader quits.
    fn follow(&self) {
        let mut seen = self.epoch.load(Ordering::Acquire);
        let mut idle = 0u32;
        loop {
            let epoch = self.epoch.load(Ordering::Acquire);
            if epoch == seen {
                if self.quit.load(Ordering::Acquire) {
                    return;
                }
                idle = idle.wrapping_add(1);
                if idle.is_multiple_of(64) {
                    // Rayon work of the leader (code in the closure that uses rayon) is
                    // taken here; otherwise the leader would run it alone.
                    let _ = rayon::yield_now();
                } else {
                    std::hint::spin_loop();
                }
                continue;
            }
            idle = 0;
            self.inside.fetch_add(1, Ordering::SeqCst);
            let job = self.job.load(Ordering::SeqCst);
            if !job.is_null() {
                // SAFETY: `job` was read after `inside` was incremented (both SeqCst). The
                // leader clears `job` (SeqCst) before it waits for `inside` to reach zero,
                // and the region stays alive until then (`Team::region`), so a non-null
                // pointer read here points to a live `Region` until `inside` is decremented
                // below. It may be a later region than `epoch`'s; running any open region is
                // correct, since member functions claim tasks from the region's own counter.
                let region = unsafe { &*job.cast::<Region<'_>>() };
                if catch_unwind(AssertUnwindSafe(region.member)).is_err() {
                    region.panicked.store(true, Ordering::Release);
                }
            }
            self.inside.fetch_sub(1, Ordering::Release);
            seen = epoch;
        }
    }

    /// Opens a region in which every member runs `member` once, runs it on the leader too,
    /// and returns when every member has left it. Called only by the leader, outside regions.
    fn region(&self, member: &(dyn Fn() + Sync)) {
        let region = Region {
            member,
            panicked: AtomicBool::new(false),
        };
        self.job.store(
            std::ptr::from_ref(&region).cast_mut().cast(),
            Ordering::SeqCst,
        );
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let own = {
            // Nested regions (from inside `member`) run on rayon, not on this team.
            let _inside = Leading::set(std::ptr::null());
            catch_unwind(AssertUnwindSafe(member))
        };
        self.job.store(std::ptr::null_mut(), Ordering::SeqCst);
        // No follower can reach `region` any more; wait for those that have.
        let mut spins = 0u32;
        while self.inside.load(Ordering::SeqCst) != 0 {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        if let Err(payload) = own {
            resume_unwind(payload);
        }
        assert!(
            !region.panicked.load(Ordering::Acquire),
            "a task of a parallel region panicked on another thread"
        );
    }
}

/// Hands out the task indices `0..tasks`, each once, in runs of `run` consecutive tasks
/// (claiming is an atomic operation on a line all members write: a region of many small tasks
/// claims a few runs per member instead of each task).
/// On its own pair of cache lines: it lives on the leader's stack, and followers write it.
#[repr(align(128))]
struct Claims {
    next: AtomicUsize,
    tasks: usize,
    run: usize,
}

impl Claims {
    fn new(tasks: usize, members: usize) -> Claims {
        Claims {
            next: AtomicUsize::new(0),
            tasks,
            run: tasks.div_ceil(4 * members).max(1),
        }
    }

    fn next(&self) -> Option<std::ops::Range<usize>> {
        let i = self.next.fetch_add(self.run, Ordering::Relaxed);
        (i < self.tasks).then(|| i..self.tasks.min(i + self.run))
    }
}

/// Runs `task(scratch, i)` for every `i` in `0..tasks`, each exactly once, in parallel, and
/// folds the results with `combine`, starting from `identity` (`combine` must be associative
/// and commutative, with `identity` neutral: the order of the folds is not fixed). Each
/// thread makes its scratch with `init` before its first task (and not at all if it runs
/// none).
pub(crate) fn run<S, R>(
    tasks: usize,
    init: impl Fn() -> S + Sync,
    task: impl Fn(&mut S, usize) -> R + Sync,
    identity: R,
    combine: impl Fn(R, R) -> R + Sync,
) -> R
where
    R: Copy + Send + Sync,
{
    if tasks == 0 {
        return identity;
    }
    with_leading(|team| match team {
        Some(team) if tasks > 1 => {
            let claims = Claims::new(tasks, team.members);
            let total = Mutex::new(identity);
            let member = || {
                let Some(first) = claims.next() else { return };
                let mut scratch = init();
                let mut acc = identity;
                for i in first {
                    acc = combine(acc, task(&mut scratch, i));
                }
                while let Some(run) = claims.next() {
                    for i in run {
                        acc = combine(acc, task(&mut scratch, i));
                    }
                }
                let mut total = total.lock().unwrap_or_else(|e| e.into_inner());
                *total = combine(*total, acc);
            };
            team.region(&member);
            total.into_inner().unwrap_or_else(|e| e.into_inner())
        }
        _ => {
            // References to `Sync` closures are `Send`, as rayon wants.
            let (init, task, combine) = (&init, &task, &combine);
            (0..tasks)
                .into_par_iter()
                .map_init(init, task)
                .reduce(|| identity, combine)
        }
    })
}

/// Runs `task(i)` for every `i` in `0..tasks`, each exactly once, in parallel.
#[cfg(test)]
fn for_each(tasks: usize, task: impl Fn(usize) + Sync) {
    run(tasks, || (), |_, i| task(i), (), |_, _| ());
}

/// A `*mut T` that may cross threads; what it may be used for is argued where it is used.
struct SharedMut<T>(*mut T);

// SAFETY: the pointer is only used by `chunks_mut` to make disjoint `&mut [T]` chunks, each
// on one thread; that is sound to do from any thread when `T: Send`.
unsafe impl<T: Send> Send for SharedMut<T> {}
// SAFETY: as above; sharing `&SharedMut` only shares the address.
unsafe impl<T: Send> Sync for SharedMut<T> {}

/// Runs `task(scratch, i, chunk)` for every consecutive chunk of `len` elements of `data`
/// (the last one possibly shorter), chunk `i` starting at `i·len`, each exactly once, in
/// parallel, folding the results as [`run`] does.
pub(crate) fn chunks_mut<T, S, R>(
    data: &mut [T],
    len: usize,
    init: impl Fn() -> S + Sync,
    task: impl Fn(&mut S, usize, &mut [T]) -> R + Sync,
    identity: R,
    combine: impl Fn(R, R) -> R + Sync,
) -> R
where
    T: Send,
    R: Copy + Send + Sync,
{
    assert!(len > 0, "chunks of zero elements");
    let n = data.len();
    let base = SharedMut(data.as_mut_ptr());
    let base = &base;
    run(
        n.div_ceil(len),
        init,
        |scratch, i| {
            let start = i * len;
            let end = n.min(start + len);
            // SAFETY: `start < end <= n` (i < n.div_ceil(len)), so the chunk is inside
            // `data`, which is mutably borrowed for the whole call. `run` runs every index
            // exactly once (a fresh atomic counter, or rayon's split of a range), so no two
            // chunks made here alias, and none outlives the call. `T: Send` lets the chunk
            // be used on the thread that runs the task.
            let chunk = unsafe { std::slice::from_raw_parts_mut(base.0.add(start), end - start) };
            task(scratch, i, chunk)
        },
        identity,
        combine,
    )
}

/// Runs `task(i, chunk)` for every consecutive chunk of `len` elements of `data` (see
/// [`chunks_mut`]), in parallel.
pub(crate) fn for_each_chunk<T: Send>(
    data: &mut [T],
    len: usize,
    task: impl Fn(usize, &mut [T]) + Sync,
) {
    chunks_mut(data, len, || (), |_, i, c| task(i, c), (), |_, _| ());
}

#[cfg(test)]
mod tests {
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
                let expected: Vec<usize> =
                    counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
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
}
