//! The background worker: registered at server start when the library is preloaded,
//! it runs `schedule` runs on `synapse_compress.database` every
//! `synapse_compress.interval`, one chunk per transaction.
//!
//! Between chunks it checks for SIGTERM (stop), SIGHUP (reload settings), pause and its
//! budget; between runs it sleeps on its latch, which `synapse_compress.run_now()` and
//! `resume()` set. An error that escapes a run (the chunk-level ones are contained and
//! recorded per room) ends the process; the postmaster restarts it and the next run
//! closes the dead run as `crashed`.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::gucs;
use crate::schedule::{self, Next, Source};
use synapse_compress_core::schedule::{Budget, RunEnd};

/// Set in the postmaster when it preloads us (and inherited by every backend).
static REGISTERED: AtomicBool = AtomicBool::new(false);

/// `backend_type` in pg_stat_activity.
pub const WORKER_TYPE: &str = "synapse_compress worker";
/// How often an idle worker looks for run_now(), resume() and CREATE EXTENSION.
const POLL: Duration = Duration::from_secs(5);

pub fn registered() -> bool {
    REGISTERED.load(Ordering::Relaxed)
}

/// From `_PG_init` while shared_preload_libraries is processed.
pub fn register() {
    let n = gucs::WORKERS.get();
    for i in 0..n {
        BackgroundWorkerBuilder::new(&format!("synapse_compress worker {}", i + 1))
            .set_type(WORKER_TYPE)
            .set_library("synapse_compress")
            .set_function("synapse_compress_worker_main")
            .set_argument(i.into_datum())
            .enable_spi_access()
            .set_start_time(BgWorkerStartTime::RecoveryFinished)
            .set_restart_time(Some(Duration::from_secs(30)))
            .load();
    }
    REGISTERED.store(n > 0, Ordering::Relaxed);
}

/// Wake every running worker (their latches); returns how many.
pub fn wake_all() -> i32 {
    let pids: Vec<i32> = Spi::connect(|client| {
        client
            .select(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = $1",
                None,
                &[WORKER_TYPE.into()],
            )?
            .map(|row| row.get::<i32>(1))
            .collect::<Result<Vec<_>, _>>()
    })
    .map(|v| v.into_iter().flatten().collect())
    .unwrap_or_default();
    let mut woken = 0;
    for pid in pids {
        // SAFETY: the PGPROC array lives in shared memory for the server's lifetime;
        // setting another process's latch is what it is for.
        unsafe {
            let proc = pg_sys::BackendPidGetProc(pid);
            if !proc.is_null() {
                pg_sys::SetLatch(&raw mut (*proc).procLatch);
                woken += 1;
            }
        }
    }
    woken
}

/// What the worker needs to know before a run, read in one short transaction.
#[derive(Default)]
struct Control {
    installed: bool,
    paused: bool,
    /// `wake_requested_at` as epoch seconds.
    wake: f64,
    /// Minutes since midnight in the session's (the server's) time zone.
    minute: Option<u32>,
}

impl Control {
    /// Whether `synapse_compress.window` is open now.
    fn in_window(&self) -> bool {
        schedule::window_open(self.minute)
    }
}

fn read_control(client: &SpiClient<'_>) -> Result<Control, pgrx::spi::SpiError> {
    let installed = client
        .select(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'synapse_compress')",
            None,
            &[],
        )?
        .first()
        .get_one::<bool>()?
        .unwrap_or(false);
    if !installed {
        return Ok(Control::default());
    }
    let row = client
        .select(
            "SELECT paused, coalesce(extract(epoch FROM wake_requested_at), 0)::float8, \
                    (extract(hour FROM localtime) * 60 + extract(minute FROM localtime))::int \
             FROM synapse_compress.control",
            None,
            &[],
        )?
        .first()
        .get_three::<bool, f64, i32>()?;
    Ok(Control {
        installed,
        paused: row.0.unwrap_or(false),
        wake: row.1.unwrap_or(0.0),
        minute: row.2.and_then(|m| u32::try_from(m).ok()),
    })
}

fn now_epoch() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The worker's own view of its signals: pgrx's accessors reset them when read.
struct Signals {
    stop: bool,
}

impl Signals {
    fn poll(&mut self) {
        if BackgroundWorker::sighup_received() {
            // SAFETY: the standard reload of a backend's configuration.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            log!(
                "synapse_compress worker: settings reloaded (window {:?})",
                gucs::text(&gucs::WINDOW)
            );
        }
        if BackgroundWorker::sigterm_received() {
            self.stop = true;
        }
    }

    /// Sleep on the latch; false when the worker must stop.
    fn sleep(&mut self, d: Duration) -> bool {
        if !self.stop && !BackgroundWorker::wait_latch(Some(d.max(Duration::from_millis(1)))) {
            self.stop = true;
        }
        self.poll();
        !self.stop
    }
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn synapse_compress_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let db = gucs::text(&gucs::DATABASE);
    let role = gucs::text(&gucs::ROLE);
    BackgroundWorker::connect_worker_to_spi(Some(&db), (!role.is_empty()).then_some(role.as_str()));
    // The database's defaults are its owner's (often Synapse's role) to set: pin the
    // search_path before running any query, and the isolation the locking protocol
    // is written for (a fresh snapshot per statement; a retried chunk sees new data).
    BackgroundWorker::transaction(|| {
        Spi::run("SET search_path = pg_catalog, pg_temp")?;
        Spi::run("SET default_transaction_isolation = 'read committed'")
    })
    .unwrap_or_else(|e| panic!("synapse_compress worker: cannot set its session up: {e}"));
    log!("synapse_compress worker started on database {db:?}");

    let mut signals = Signals { stop: false };
    let mut next_run = Instant::now();
    let mut last_start = 0.0f64;
    let mut waiting_logged = false;
    // The window last reported closed (logged once per setting).
    let mut closed_logged: Option<String> = None;
    while !signals.stop {
        signals.poll();
        let control =
            BackgroundWorker::transaction(|| Spi::connect(read_control).unwrap_or_default());
        if !control.installed {
            if !waiting_logged {
                log!("synapse_compress worker: waiting for CREATE EXTENSION synapse_compress in {db:?}");
                waiting_logged = true;
            }
            signals.sleep(POLL);
            continue;
        }
        waiting_logged = false;
        let woken = control.wake > last_start;
        let due = woken || Instant::now() >= next_run;
        if due && gucs::ENABLED.get() && !control.paused && !control.in_window() {
            // Due, but outside synapse_compress.window: wait for it (still due).
            let window = gucs::text(&gucs::WINDOW);
            if closed_logged.as_deref() != Some(window.as_str()) {
                log!("synapse_compress worker: a run is due; waiting for synapse_compress.window {window:?}");
                closed_logged = Some(window.clone());
            }
            set_idle_with(&format!(
                "synapse_compress worker: waiting for synapse_compress.window {window}"
            ));
            signals.sleep(POLL);
            continue;
        }
        closed_logged = None;
        if due && gucs::ENABLED.get() && !control.paused {
            last_start = now_epoch();
            run(&mut signals);
            next_run = Instant::now() + Duration::from_secs(gucs::INTERVAL.get().max(1) as u64);
            set_idle();
            continue;
        }
        let until_next = next_run.saturating_duration_since(Instant::now());
        signals.sleep(until_next.min(POLL));
    }
    log!("synapse_compress worker stopped");
}

fn set_idle() {
    // SAFETY: backend thread.
    unsafe { pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_IDLE, std::ptr::null()) };
}

/// Idle, with `text` as `pg_stat_activity.query`.
fn set_idle_with(text: &str) {
    if let Ok(c) = std::ffi::CString::new(text) {
        // SAFETY: backend thread; PostgreSQL copies the string.
        unsafe { pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_IDLE, c.as_ptr()) };
    }
}

/// One scheduled run, until no work is left, the budget is spent, or it is paused,
/// disabled, stopped or out of its window: `schedule::step` decides at each chunk
/// boundary, as for `compress_database`.
fn run(signals: &mut Signals) {
    let run_id = BackgroundWorker::transaction(|| {
        Spi::connect_mut(|c| schedule::begin_run(c, Source::Worker))
            .unwrap_or_else(|e| schedule::raise(e))
    });
    let started = Instant::now();
    let mut chunks: u64 = 0;
    let (outcome, message) = loop {
        signals.poll();
        let budget = Budget {
            time: (gucs::MAX_RUN_TIME.get() > 0)
                .then(|| Duration::from_secs(gucs::MAX_RUN_TIME.get() as u64)),
            chunks: (gucs::MAX_RUN_CHUNKS.get() > 0).then(|| gucs::MAX_RUN_CHUNKS.get() as u64),
        };
        let (elapsed, stop) = (started.elapsed(), signals.stop);
        let next = BackgroundWorker::transaction(AssertUnwindSafe(|| {
            Spi::connect_mut(|c| schedule::step(c, run_id, budget, elapsed, chunks, stop))
                .unwrap_or_else(|e| schedule::raise(e))
        }));
        match next {
            Next::End { end, message } => break (end, message),
            Next::Chunk(step) => chunks += step.chunks,
        }
        let pause = Duration::from_millis(gucs::CHUNK_PAUSE.get() as u64);
        if !pause.is_zero() && !signals.sleep(pause) {
            break (RunEnd::Stopped, None);
        }
    };
    BackgroundWorker::transaction(|| {
        Spi::connect_mut(|c| schedule::end_run(c, run_id, outcome.as_str(), message.as_deref()))
            .unwrap_or_else(|e| schedule::raise(e))
    });
    log!("synapse_compress worker: run {run_id} {outcome} after {chunks} chunks");
}

/// The worker's SQL functions (the `status` view's readers, `run_now()`'s latch).
#[pg_schema]
pub mod synapse_compress {
    use pgrx::prelude::*;
    use pgrx::PgSqlErrorCode;

    use crate::errors::required;

    /// Whether this server registered the background worker (library preloaded and
    /// `synapse_compress.workers` > 0).
    #[pg_extern(stable, parallel_safe)]
    #[search_path(pg_catalog, pg_temp)]
    fn worker_registered() -> bool {
        super::registered()
    }

    /// Minutes from `minute_of_day` (0..1439) until `synapse_compress.window` is open:
    /// 0 inside it (and when it is empty). `window_start()` and the `status` view's
    /// `next_run` use it, with the worker's own rule (`schedule::Window`).
    #[pg_extern(stable, parallel_safe)]
    #[search_path(pg_catalog, pg_temp)]
    fn window_wait(minute_of_day: Option<i32>) -> Option<i32> {
        let minute = required(minute_of_day, "minute_of_day");
        let Some(minute) = u32::try_from(minute).ok().filter(|m| *m < 24 * 60) else {
            crate::errors::report(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("minute_of_day {minute} is not between 0 and 1439"),
                "Pass minutes since midnight: hours * 60 + minutes.".into(),
            )
        };
        crate::gucs::window().map(|w| w.minutes_until_open(minute) as i32)
    }

    /// Set the latch of every running worker; returns how many were woken.
    #[pg_extern(volatile, parallel_unsafe)]
    #[search_path(pg_catalog, pg_temp)]
    fn wake_workers() -> i32 {
        super::wake_all()
    }
}
