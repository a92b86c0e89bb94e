//! The `kco` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;

// jemalloc returns freed pages to the system within seconds; glibc's malloc kept
// each hand-off's peak (hundreds of connections' buffers) as RSS for good.
#[cfg(all(feature = "jemalloc", not(feature = "heap-profile")))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(feature = "heap-profile")]
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn main() -> ExitCode {
    #[cfg(feature = "heap-profile")]
    heap_profile::start();
    let cli = kco::cli::Cli::parse();
    kco::tls::install_crypto_provider();
    kco::cli::run(cli)
}

/// Diagnostics for soak investigations (`--features heap-profile`): with
/// `KCO_HEAP_PROFILE=<file>` set, dhat records every allocation and the live
/// heap is appended to `<file>.<pid>.csv` every 30 s. After
/// `KCO_HEAP_PROFILE_SECS` (default 600) the profile of the blocks live at that
/// moment is written to `<file>.<pid>.json` (read it with dhat's viewer) and
/// recording stops. A clean exit frees everything, so the profile is taken
/// mid-run.
#[cfg(feature = "heap-profile")]
mod heap_profile {
    use std::io::Write;
    use std::time::{Duration, Instant};

    pub fn start() {
        let Some(file) = std::env::var_os("KCO_HEAP_PROFILE") else {
            return;
        };
        let dump_after = std::env::var("KCO_HEAP_PROFILE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(600);
        let file = format!("{}.{}", file.to_string_lossy(), std::process::id());
        let profiler = dhat::Profiler::builder()
            .file_name(format!("{file}.json"))
            .build();
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut out = std::fs::File::create(format!("{file}.csv")).ok();
            loop {
                std::thread::sleep(Duration::from_secs(30));
                let stats = dhat::HeapStats::get();
                if let Some(out) = out.as_mut() {
                    let _ = writeln!(
                        out,
                        "{},{},{},{}",
                        started.elapsed().as_secs(),
                        stats.curr_bytes,
                        stats.curr_blocks,
                        stats.total_blocks
                    );
                }
                if started.elapsed().as_secs() >= dump_after {
                    break;
                }
            }
            // Dropping the profiler writes the live blocks' sites.
            drop(profiler);
        });
    }
}
