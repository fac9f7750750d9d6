//! Progress lines on stderr for the long-running commands.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use patchcore::model::FitProgress;

/// Progress lines on stderr. On a terminal one line is rewritten in place; otherwise a line is
/// printed at most every few seconds (and at the end), so logs stay short.
pub struct Progress {
    label: &'static str,
    start: Instant,
    last: Option<Instant>,
    tty: bool,
    quiet: bool,
    ticker: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    coreset_start: Option<Instant>,
}

impl Progress {
    pub fn new(label: &'static str, quiet: bool) -> Self {
        Progress {
            label,
            start: Instant::now(),
            last: None,
            tty: std::io::stderr().is_terminal(),
            quiet,
            ticker: None,
            coreset_start: None,
        }
    }

    fn interval(&self) -> Duration {
        if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        }
    }

    /// `done` of `total` images processed since [`Progress::new`].
    pub fn images(&mut self, done: usize, total: usize) {
        if self.quiet {
            return;
        }
        let now = Instant::now();
        let due = self.last.is_none_or(|l| now - l >= self.interval());
        if !(due || done == total) {
            return;
        }
        self.last = Some(now);
        let s = (now - self.start).as_secs_f64().max(1e-9);
        let rate = done as f64 / s;
        let eta = total.saturating_sub(done) as f64 / rate.max(1e-9);
        let line = format!(
            "{}: {done}/{total} images, {rate:.1} images/s, ETA {eta:.0} s",
            self.label
        );
        if self.tty {
            eprint!("\r{line}   ");
            if done == total {
                eprintln!();
            }
        } else {
            eprintln!("{line}");
        }
    }

    /// The fit callback: feature extraction in images/s with an ETA, then the coreset with the
    /// elapsed time (the selection reports no intermediate progress).
    pub fn fit(&mut self, p: FitProgress) {
        match p {
            FitProgress::Features { done, total } => self.images(done, total),
            FitProgress::CoresetStarted { rows, keep } if !self.quiet => {
                eprintln!("coreset: choosing {keep} of {rows} patch features ...");
                self.coreset_start = Some(Instant::now());
                self.start_ticker();
            }
            FitProgress::Coreset { selected, total } if !self.quiet && selected < total => {
                // The greedy passes get cheaper as keys shrink: the ETA is an upper bound.
                if let Some(t0) = self.coreset_start {
                    let s = t0.elapsed().as_secs_f64().max(1e-9);
                    let eta = total.saturating_sub(selected) as f64 * s / selected.max(1) as f64;
                    let line = format!(
                        "coreset: {selected}/{total} rows chosen, {s:.0} s, ETA ~{eta:.0} s"
                    );
                    let now = Instant::now();
                    if self.last.is_none_or(|l| now - l >= self.interval()) {
                        self.last = Some(now);
                        if self.tty {
                            eprint!("\r{line}   ");
                        } else {
                            eprintln!("{line}");
                        }
                    }
                }
            }
            FitProgress::Gathering { rows } if !self.quiet => {
                eprintln!("coreset: reading the {rows} chosen rows back from the spill file");
            }
            FitProgress::Done { rows } => {
                self.stop_ticker();
                if !self.quiet {
                    eprintln!("coreset: done, memory bank of {rows} rows");
                }
            }
            _ => {}
        }
    }

    fn start_ticker(&mut self) {
        self.stop_ticker();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (interval, tty) = (self.interval().max(Duration::from_secs(1)), self.tty);
        let handle = std::thread::spawn(move || {
            let start = Instant::now();
            loop {
                std::thread::park_timeout(interval);
                if flag.load(Ordering::Acquire) {
                    break;
                }
                let s = start.elapsed().as_secs();
                if tty {
                    eprint!("\rcoreset: {s} s elapsed   ");
                } else {
                    eprintln!("coreset: {s} s elapsed");
                }
            }
            if tty {
                eprint!("\r");
            }
        });
        self.ticker = Some((stop, handle));
    }

    fn stop_ticker(&mut self) {
        if let Some((stop, handle)) = self.ticker.take() {
            stop.store(true, Ordering::Release);
            handle.thread().unpark();
            let _ = handle.join();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop_ticker();
    }
}
