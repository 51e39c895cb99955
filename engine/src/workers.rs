//! The engine's worker threads (thread-per-core) and the one parallel operation the tick
//! needs: run a closure over disjoint chunks of a slice, with the calling thread working
//! alongside the workers. It is not a general task pool and knows nothing of sectors.
//!
//! Why not a rayon `install` + `par_iter_mut`: there the calling thread sleeps while the
//! pool works, so every tick waits for the scheduler to run each worker and then to wake
//! the caller again. On a machine whose cores are also busy with other processes that
//! wake-up costs milliseconds (measured: a 1 ms tick took 3–5 ms with two rayon workers
//! under a load of 7 on two cores). Here the caller starts on the chunks at once and
//! workers join when they get a core; a worker that joins late finds no chunk left and
//! leaves, and a worker that never got scheduled is never waited for. So adding threads
//! can only make a run faster, never slower, whatever the machine's load.
//!
//! Protocol (all atomics, no lock): the caller publishes the job, opens the `gate`, bumps
//! `epoch` and unparks the workers; everyone claims chunk indices from `next` until they
//! run out. A worker enters by incrementing the gate's count while the gate is open; the
//! caller, when no chunk is left, closes the gate and waits for the count to reach zero
//! (workers still inside are finishing their last chunk). Only then does the borrow of
//! the slice end. A panic inside a chunk on a worker is caught, counted, and re-raised on
//! the caller after the run, so the count always reaches zero.

use std::cell::{Cell, UnsafeCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Gate bit: the current run accepts workers.
const GATE_OPEN: u64 = 1 << 63;
/// Gate bits counting the workers inside the current run.
const GATE_COUNT: u64 = GATE_OPEN - 1;
/// Spins while waiting for workers to leave before yielding the core to them.
const CLOSE_SPINS_BEFORE_YIELD: u32 = 256;

thread_local! {
    /// Which thread of its pool this is: `i` on worker `i`, 0 on any other thread.
    static WORKER_INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The calling thread's index in its pool: 0 for the caller of a run (or any thread
/// that is not a worker), `i` for worker `i`, below the pool's thread count. For
/// per-thread buffers the caller can read after a run.
pub(crate) fn worker_index() -> usize {
    WORKER_INDEX.get()
}

/// Most cache lines one [`prefetch`] asks for (4 KiB).
const PREFETCH_LINES_MAX: usize = 64;

/// Asks the CPU to start loading the `bytes` bytes at `at` into its caches (at most
/// [`PREFETCH_LINES_MAX`] lines), so a later read of them does not wait on memory. A
/// hint: it reads nothing the program can see and never faults, whatever the address;
/// a no-op on other architectures than x86-64.
#[inline]
pub(crate) fn prefetch<T>(at: *const T, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let first = at.cast::<i8>();
        for line in 0..bytes.div_ceil(64).min(PREFETCH_LINES_MAX) {
            // SAFETY: a prefetch is not a memory access (it cannot fault or be observed
            // by the program), and `wrapping_add` keeps the address computation defined.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(first.wrapping_add(line * 64)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (at, bytes);
}

/// A type-erased `&dyn Fn(usize)` valid for one run.
type ChunkFn = *const (dyn Fn(usize) + Sync);

struct Shared {
    /// Bumped once per run (and on shutdown); workers sleep until it changes.
    epoch: AtomicU64,
    /// [`GATE_OPEN`] plus the number of workers inside the current run.
    gate: AtomicU64,
    /// Next chunk index to claim.
    next: AtomicUsize,
    /// Chunks in the current run.
    chunks: AtomicUsize,
    /// The current run's job; written only while the gate is closed and empty.
    job: UnsafeCell<Option<ChunkFn>>,
    /// A chunk panicked on a worker during the current run.
    panicked: AtomicBool,
    shutdown: AtomicBool,
}

// SAFETY: `job` is written by the caller only while no worker can read it (gate closed
// and its count zero) and read by workers only inside an open run, after an Acquire that
// pairs with the caller's Release opening the gate. The closure it points to is `Sync`.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw pointer is only dereferenced under that protocol.
unsafe impl Send for Shared {}

/// The worker threads; see the module docs.
pub(crate) struct Workers {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `threads - 1` worker threads (the caller is the other one). With `pin`,
    /// worker `i` is pinned to core `i` (wrapping), leaving core 0 to the caller's side.
    ///
    /// # Errors
    /// The I/O error of a thread that could not be spawned.
    pub(crate) fn start(threads: usize, pin: bool) -> std::io::Result<Workers> {
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            gate: AtomicU64::new(0),
            next: AtomicUsize::new(0),
            chunks: AtomicUsize::new(0),
            job: UnsafeCell::new(None),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
        });
        let cores = if pin {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut workers = Workers {
            shared,
            threads: Vec::with_capacity(threads.saturating_sub(1)),
        };
        for i in 1..threads.max(1) {
            let shared = Arc::clone(&workers.shared);
            let core = cores.get(i % cores.len().max(1)).copied();
            let handle = std::thread::Builder::new()
                .name(format!("warpcore-sector-{i}"))
                .spawn(move || {
                    WORKER_INDEX.set(i);
                    // Pinning can fail in a restricted container; the worker then runs
                    // unpinned, which is slower but correct.
                    if let Some(core) = core {
                        if !core_affinity::set_for_current(core) {
                            tracing::warn!(worker = i, "could not pin worker thread to its core");
                        }
                    }
                    worker_loop(&shared);
                })?;
            // On an error above, `workers` drops here and stops the threads started.
            workers.threads.push(handle);
        }
        Ok(workers)
    }

    /// Threads that work on a run, the caller included.
    #[cfg(test)]
    pub(crate) fn threads(&self) -> usize {
        self.threads.len() + 1
    }

    /// Calls `f` on every element of `items`, in chunks of `chunk_len` elements spread
    /// over the caller and the workers. Returns the number of chunks. Elements of one
    /// chunk are visited in order; chunks run in any order, so `f` must not depend on
    /// other elements.
    ///
    /// # Panics
    /// If `f` panics (on a worker, the panic is re-raised here after the run).
    pub(crate) fn for_each_chunked<T: Send>(
        &self,
        items: &mut [T],
        chunk_len: usize,
        f: &(dyn Fn(&mut T) + Sync),
    ) -> usize {
        let chunk_len = chunk_len.max(1);
        let chunks = items.len().div_ceil(chunk_len);
        if self.threads.is_empty() || chunks <= 1 {
            items.iter_mut().for_each(f);
            return chunks.max(1);
        }
        let base = SendPtr(items.as_mut_ptr());
        let len = items.len();
        let run_chunk = move |chunk: usize| {
            let start = chunk * chunk_len;
            let end = (start + chunk_len).min(len);
            // SAFETY: `chunk` is claimed exactly once per run (fetch_add on `next`), so
            // the ranges are disjoint and in bounds; the run ends (all workers out)
            // before `items`' borrow does.
            let part =
                unsafe { std::slice::from_raw_parts_mut(base.get().add(start), end - start) };
            part.iter_mut().for_each(f);
        };
        self.run(chunks, &run_chunk);
        chunks
    }

    /// Like [`Workers::for_each_chunked`], but visits `items[order[0]]`,
    /// `items[order[1]]`, ... (chunks of `chunk_len` entries of `order`), calling `f`
    /// with each element and its position in `order` (for data kept beside the order):
    /// elements that read the same shared data can be visited one after another, while
    /// it is in the cache. `seen` is a reused bitmap for checking that `order` names
    /// each element at most once.
    ///
    /// Elements visited in such an order are scattered in memory, so each would start
    /// with a cache miss: before `f` runs on one, the element two places further in the
    /// chunk is [`prefetch`]ed and `ahead` is called on the next one (already fetched),
    /// to prefetch what it points to.
    ///
    /// # Panics
    /// If `order` holds an index twice or one out of bounds (a bug in the caller), or
    /// if `f` panics.
    pub(crate) fn for_each_chunked_in_order<T: Send>(
        &self,
        items: &mut [T],
        order: &[u32],
        seen: &mut Vec<u64>,
        chunk_len: usize,
        f: &(dyn Fn(&mut T, usize) + Sync),
        ahead: &(dyn Fn(&T) + Sync),
    ) -> usize {
        // The check that makes the disjoint `&mut` below sound: O(n), one bit per item.
        seen.clear();
        seen.resize(items.len().div_ceil(64), 0);
        for &index in order {
            let index = index as usize;
            assert!(
                index < items.len(),
                "order names element {index} of {}",
                items.len()
            );
            let (word, bit) = (index / 64, 1u64 << (index % 64));
            assert!(seen[word] & bit == 0, "order names element {index} twice");
            seen[word] |= bit;
        }
        let chunk_len = chunk_len.max(1);
        let chunks = order.len().div_ceil(chunk_len);
        let base = SendPtr(items.as_mut_ptr());
        let run_chunk = move |chunk: usize| {
            let start = chunk * chunk_len;
            let end = (start + chunk_len).min(order.len());
            let chunk = &order[start..end];
            for (k, &index) in chunk.iter().enumerate() {
                if let Some(&later) = chunk.get(k + 2) {
                    prefetch(base.get().wrapping_add(later as usize), size_of::<T>());
                }
                if let Some(&next) = chunk.get(k + 1) {
                    // SAFETY: as below; `next` is in this chunk, so no other thread
                    // touches it, and this shared borrow ends before its `&mut` is made.
                    ahead(unsafe { &*base.get().add(next as usize) });
                }
                // SAFETY: every index is in bounds and appears once in `order` (checked
                // above), each chunk of `order` is claimed exactly once per run, so no
                // two calls get the same element; the run ends (all workers out) before
                // `items`' borrow does.
                let item = unsafe { &mut *base.get().add(index as usize) };
                f(item, start + k);
            }
        };
        if self.threads.is_empty() || chunks <= 1 {
            (0..chunks).for_each(run_chunk);
        } else {
            self.run(chunks, &run_chunk);
        }
        chunks.max(1)
    }

    fn run(&self, chunks: usize, job: &(dyn Fn(usize) + Sync)) {
        let shared = &*self.shared;
        // SAFETY: only the lifetime is erased; the pointer is used by workers only
        // while the gate is open, and `run` does not return before it is closed and
        // every worker has left.
        let erased: ChunkFn = unsafe { std::mem::transmute(job) };
        debug_assert_eq!(shared.gate.load(Ordering::Acquire), 0);
        // SAFETY: the gate is closed and empty: no worker reads `job` now.
        unsafe { *shared.job.get() = Some(erased) };
        shared.next.store(0, Ordering::Relaxed);
        shared.chunks.store(chunks, Ordering::Relaxed);
        shared.panicked.store(false, Ordering::Relaxed);
        shared.gate.store(GATE_OPEN, Ordering::Release);
        shared.epoch.fetch_add(1, Ordering::Release);
        for thread in &self.threads {
            thread.thread().unpark();
        }
        // Closes the run even if `job` panics here on the caller: the slice must not
        // be released while a worker is still inside.
        let close = CloseOnDrop(shared);
        claim_chunks(shared, job);
        drop(close);
        if shared.panicked.load(Ordering::Acquire) {
            panic!("a sector worker thread panicked during the tick");
        }
    }
}

/// Ends a run: closes the gate, then waits for the workers still finishing a chunk.
struct CloseOnDrop<'a>(&'a Shared);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        let shared = self.0;
        let mut gate = shared.gate.fetch_and(!GATE_OPEN, Ordering::AcqRel) & !GATE_OPEN;
        let mut spins = 0u32;
        while gate & GATE_COUNT != 0 {
            if spins < CLOSE_SPINS_BEFORE_YIELD {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
            }
            gate = shared.gate.load(Ordering::Acquire);
        }
        // SAFETY: the gate is closed and empty again: no worker reads `job`.
        unsafe { *shared.job.get() = None };
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.epoch.fetch_add(1, Ordering::Release);
        for thread in self.threads.drain(..) {
            thread.thread().unpark();
            // A worker only ends by seeing `shutdown`; a join error means it panicked
            // outside a chunk, which there is nothing left to do about.
            let _ = thread.join();
        }
    }
}

/// Claims and runs chunks until none is left.
fn claim_chunks(shared: &Shared, job: &(dyn Fn(usize) + Sync)) {
    let chunks = shared.chunks.load(Ordering::Relaxed);
    loop {
        let chunk = shared.next.fetch_add(1, Ordering::Relaxed);
        if chunk >= chunks {
            return;
        }
        job(chunk);
    }
}

fn worker_loop(shared: &Shared) {
    // Zero, not the current epoch: a thread that starts late must still see `shutdown`
    // (checked before every park) and may join a run that is already open.
    let mut seen = 0;
    loop {
        if shared.shutdown.load(Ordering::Acquire) {
            return;
        }
        let epoch = shared.epoch.load(Ordering::Acquire);
        if epoch == seen {
            // `unpark` before `park` leaves a token, so a wake-up is never lost.
            std::thread::park();
            continue;
        }
        seen = epoch;
        if !enter(shared) {
            // Too late: the caller did every chunk and closed the gate.
            continue;
        }
        // SAFETY: inside an open run (see `Shared`), `job` is set and valid.
        let job = unsafe { *shared.job.get() };
        if let Some(job) = job {
            // SAFETY: the caller keeps the closure alive until this worker leaves.
            let job = unsafe { &*job };
            if catch_unwind(AssertUnwindSafe(|| claim_chunks(shared, job))).is_err() {
                shared.panicked.store(true, Ordering::Release);
                // Let the caller finish the rest rather than wait on a lost chunk: the
                // panic is re-raised there anyway.
            }
        }
        shared.gate.fetch_sub(1, Ordering::Release);
    }
}

/// Joins the open run, if any: true when this worker is now counted in the gate.
fn enter(shared: &Shared) -> bool {
    let mut gate = shared.gate.load(Ordering::Acquire);
    loop {
        if gate & GATE_OPEN == 0 {
            return false;
        }
        match shared
            .gate
            .compare_exchange_weak(gate, gate + 1, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => return true,
            Err(current) => gate = current,
        }
    }
}

/// A raw pointer that may cross threads (the disjoint chunks make it sound).
struct SendPtr<T>(*mut T);

// Not derived: the derive would require `T: Copy`.
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// A method rather than field access, so closures capture the whole `SendPtr`.
    fn get(self) -> *mut T {
        self.0
    }
}

// SAFETY: only used to hand out disjoint `&mut` chunks of a slice of `T: Send`.
unsafe impl<T: Send> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SendPtr<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_element_once_with_and_without_workers() {
        for threads in [1, 2, 4] {
            let workers = Workers::start(threads, false).unwrap();
            assert_eq!(workers.threads(), threads);
            for round in 0..200u64 {
                let mut items: Vec<u64> = (0..1000).collect();
                let chunks = workers.for_each_chunked(&mut items, 7, &|x| *x += round);
                assert_eq!(chunks, 143);
                assert!(items
                    .iter()
                    .enumerate()
                    .all(|(i, &x)| x == i as u64 + round));
            }
            let mut empty: Vec<u64> = Vec::new();
            workers.for_each_chunked(&mut empty, 4, &|x| *x += 1);
        }
    }

    #[test]
    fn in_order_visits_each_named_element_once_and_refuses_a_repeat() {
        let mut seen = Vec::new();
        for threads in [1, 2] {
            let workers = Workers::start(threads, false).unwrap();
            let mut items = vec![0u64; 1000];
            // Every third element, backwards: the others stay untouched.
            let order: Vec<u32> = (0..1000).rev().step_by(3).collect();
            for round in 1..=50u64 {
                workers.for_each_chunked_in_order(
                    &mut items,
                    &order,
                    &mut seen,
                    5,
                    &|x, _| *x += round,
                    &|_| {},
                );
            }
            let total: u64 = (1..=50).sum();
            for (i, &x) in items.iter().enumerate() {
                let named = (999 - i) % 3 == 0;
                assert_eq!(x, if named { total } else { 0 }, "element {i}");
            }
            // Each element is told its position in the order.
            let mut places = vec![u64::MAX; 1000];
            workers.for_each_chunked_in_order(
                &mut places,
                &order,
                &mut seen,
                7,
                &|x, at| *x = at as u64,
                &|_| {},
            );
            for (at, &index) in order.iter().enumerate() {
                assert_eq!(places[index as usize], at as u64, "position {at}");
            }
            let repeat = catch_unwind(AssertUnwindSafe(|| {
                workers.for_each_chunked_in_order(
                    &mut items,
                    &[1, 2, 1],
                    &mut seen,
                    1,
                    &|x, _| *x = 0,
                    &|_| {},
                );
            }));
            assert!(repeat.is_err(), "an element named twice is refused");
            let out_of_bounds = catch_unwind(AssertUnwindSafe(|| {
                workers.for_each_chunked_in_order(
                    &mut items,
                    &[1000],
                    &mut seen,
                    1,
                    &|x, _| *x = 0,
                    &|_| {},
                );
            }));
            assert!(out_of_bounds.is_err());
            assert_eq!(items[1], 0);
            assert_eq!(items[999], total, "nothing ran when the order was refused");
        }
    }

    #[test]
    fn a_panic_on_a_worker_reaches_the_caller_and_the_pool_survives() {
        let workers = Workers::start(2, false).unwrap();
        let caller = std::thread::current().id();
        let result = catch_unwind(AssertUnwindSafe(|| {
            let mut items = vec![0u32; 10_000];
            workers.for_each_chunked(&mut items, 1, &|x| {
                *x += 1;
                if std::thread::current().id() != caller {
                    panic!("boom");
                }
            });
        }));
        // The worker may not have been scheduled before the caller did every chunk;
        // either way the run ends, and the pool works afterwards.
        let _ = result;
        let mut items = vec![1u32; 100];
        workers.for_each_chunked(&mut items, 3, &|x| *x *= 2);
        assert!(items.iter().all(|&x| x == 2));
    }
}
