//! The memory accounting is honest: what the engine really allocates during a run
//! (counted by a global allocator) stays within the limit it was given. One test per
//! binary, so no other test's allocations are counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

mod common;
use common::*;

use synapse_compress_core::engine;
use synapse_compress_testkit::generator;

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(layout.size(), Relaxed) + layout.size();
        PEAK.fetch_max(now, Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[test]
fn real_allocations_stay_within_the_limit() {
    // A dry run: a real run's store (in memory) copies its tables for the undo, which
    // is the store's memory, not the engine's.
    let (mut s, rooms) = load_spec(&generator::bigstate(0.05, 7));
    for limit in [3usize << 20, 8 << 20, 32 << 20] {
        let mut o = opts("100,50,25", 500);
        o.dry_run = true;
        o.memory_limit = limit;
        let base = LIVE.load(Relaxed);
        PEAK.store(base, Relaxed);
        let sum = engine::compress_room(&mut s, &rooms[0], o, 0, &mut |_, _| {}).unwrap();
        let used = PEAK.load(Relaxed) - base;
        println!(
            "limit {limit}: allocated at most {used} bytes, accounted {}, {} slices",
            sum.memory_peak, sum.slices
        );
        assert!(sum.state_groups > 0);
        assert!(
            used <= limit,
            "limit {limit}: the engine allocated {used} bytes (accounted {})",
            sum.memory_peak
        );
    }
}
