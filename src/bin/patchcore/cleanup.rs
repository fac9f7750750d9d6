//! Temporary files of this run: removed when the run is interrupted (SIGINT / SIGTERM), and
//! stale ones that an interrupted earlier run left behind swept away.
//!
//! The library writes every output through a temporary sibling
//! (`patchcore::io_util::atomic_temp_path`) and removes it on error; a signal kills the process
//! before it can. So the commands register the temporary paths they will write (and any other
//! temporary file, e.g. a spill file) here, and a watcher thread removes the registered files
//! and exits with 128 + the signal number (130 for SIGINT, 143 for SIGTERM).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// The temporary files that exist, or may exist, right now.
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// A stale temporary file is removed only when it is at least this old (and the process that
/// wrote it is gone).
const STALE_AGE: Duration = Duration::from_secs(10 * 60);

/// Starts the watcher thread. Call once, at start-up; without it signals end the process the
/// default way (leaving temporary files behind).
pub fn install() {
    #[cfg(unix)]
    {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
            return;
        };
        std::thread::spawn(move || {
            if let Some(sig) = signals.forever().next() {
                let removed = remove_all();
                for p in removed {
                    eprintln!("interrupted: removed the temporary file {}", p.display());
                }
                std::process::exit(128 + sig);
            }
        });
    }
}

/// Removes every registered file that exists; returns those removed.
fn remove_all() -> Vec<PathBuf> {
    let live = match LIVE.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    live.iter()
        .filter(|p| std::fs::remove_file(p).is_ok())
        .cloned()
        .collect()
}

/// A registered temporary path; unregistered when dropped.
#[must_use = "the path is unregistered when the guard is dropped"]
pub struct Registered(PathBuf);

/// Registers `path` to be removed if the run is interrupted.
pub fn register(path: PathBuf) -> Registered {
    let mut live = match LIVE.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    live.push(path.clone());
    Registered(path)
}

/// Registers the temporary file the library writes `out` through.
pub fn register_output(out: &Path) -> Registered {
    register(patchcore::io_util::atomic_temp_path(out))
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut live = match LIVE.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(i) = live.iter().position(|p| p == &self.0) {
            live.swap_remove(i);
        }
    }
}

/// Whether process `pid` may still be running (true when it cannot be told).
fn may_be_alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return true;
    }
    proc.join(pid.to_string()).exists()
}

/// Removes the temporary files `.<name>.tmp-<pid>` in `dir` that an interrupted earlier run
/// left behind: `name` accepted by `is_output`, the process gone and the file older than
/// 10 minutes. Says so on stderr for each.
pub fn sweep_stale(dir: &Path, is_output: &dyn Fn(&str) -> bool) {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((output, pid)) = parse_temp_name(name) else {
            continue;
        };
        if !is_output(output) || pid == std::process::id() || may_be_alive(pid) {
            continue;
        }
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        let old = meta
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_some_and(|age| age >= STALE_AGE);
        if meta.is_file() && old && std::fs::remove_file(entry.path()).is_ok() {
            eprintln!(
                "removed {}: a temporary file left by an interrupted run (process {pid})",
                entry.path().display()
            );
        }
    }
}

/// `.<name>.tmp-<pid>` → `(name, pid)`.
fn parse_temp_name(file: &str) -> Option<(&str, u32)> {
    let rest = file.strip_prefix('.')?;
    let (name, pid) = rest.rsplit_once(".tmp-")?;
    if name.is_empty() || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((name, pid.parse().ok()?))
}

/// Sweeps the folder of output file `out` for stale temporary files of it.
pub fn sweep_for_output(out: &Path) {
    let Some(name) = out.file_name().and_then(|n| n.to_str()) else {
        return;
    };
    let dir = out.parent().unwrap_or(Path::new("."));
    sweep_stale(dir, &|n| n == name);
}

/// Sweeps a heat-map folder for stale temporary heat maps.
pub fn sweep_heatmaps(dir: &Path) {
    sweep_stale(dir, &|n| n.ends_with("_heatmap.png"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names() {
        assert_eq!(
            parse_temp_name(".model.safetensors.tmp-123"),
            Some(("model.safetensors", 123))
        );
        assert_eq!(parse_temp_name("model.safetensors.tmp-123"), None);
        assert_eq!(parse_temp_name(".a.tmp-12x"), None);
        assert_eq!(parse_temp_name(".tmp-1"), None);
    }
}
