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
mod tests;
