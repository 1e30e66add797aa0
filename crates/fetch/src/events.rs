//! What a fetch reports while it runs, and three ways to show it: progress bars on a
//! terminal, plain lines otherwise, JSON lines for machines (`--output json`).

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::unpack::LayerStats;

/// One event of a fetch, in the order they happen.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The reference was resolved to one platform's manifest.
    Resolved {
        reference: String,
        manifest_digest: String,
        platform: String,
        layers: usize,
        /// Compressed bytes of all layers.
        total_bytes: u64,
    },
    /// A layer download starts (or the layer is already cached).
    LayerStart {
        index: usize,
        digest: String,
        size: u64,
        cached: bool,
    },
    /// Download progress of a layer (compressed bytes on disk so far).
    Progress {
        index: usize,
        digest: String,
        bytes: u64,
        size: u64,
    },
    /// A layer is in the cache, verified.
    LayerDownloaded {
        index: usize,
        digest: String,
        size: u64,
        cached: bool,
        /// Bytes transferred now (0 when cached; less than `size` when resumed).
        transferred: u64,
        resumed_from: u64,
        seconds: f64,
    },
    /// A layer was unpacked into the root filesystem.
    LayerApplied {
        index: usize,
        digest: String,
        seconds: f64,
        stats: LayerStats,
    },
    /// All done.
    Done {
        /// `rootfs` or `layout`.
        target: String,
        path: String,
        manifest_digest: String,
        layers: usize,
        cached_layers: usize,
        /// Layer bytes transferred over the network.
        transferred_bytes: u64,
        seconds: f64,
    },
    /// The fetch failed; nothing was left at the destination.
    Error { message: String },
}

/// Receives events (from several tasks at once).
pub trait Reporter: Send + Sync {
    fn event(&self, event: &Event);
}

/// Discards everything.
pub struct Silent;

impl Reporter for Silent {
    fn event(&self, _: &Event) {}
}

/// One JSON object per line on stdout.
pub struct JsonLines;

impl Reporter for JsonLines {
    fn event(&self, event: &Event) {
        let mut out = std::io::stdout().lock();
        let _ = serde_json::to_writer(&mut out, event);
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    }
}

fn short(digest: &str) -> &str {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    &hex[..hex.len().min(12)]
}

/// Human-readable byte count.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Plain lines on stderr (no terminal control codes): one per milestone.
pub struct PlainLines {
    layers: Mutex<usize>,
}

impl PlainLines {
    pub fn new() -> PlainLines {
        PlainLines {
            layers: Mutex::new(0),
        }
    }
}

impl Default for PlainLines {
    fn default() -> Self {
        PlainLines::new()
    }
}

impl Reporter for PlainLines {
    fn event(&self, event: &Event) {
        let n = *self.layers.lock().unwrap();
        let line = match event {
            Event::Resolved {
                reference,
                manifest_digest,
                platform,
                layers,
                total_bytes,
            } => {
                *self.layers.lock().unwrap() = *layers;
                format!(
                    "{reference}: {platform} manifest {manifest_digest}, {layers} layers, {}",
                    human(*total_bytes)
                )
            }
            Event::LayerStart { .. } | Event::Progress { .. } => return,
            Event::LayerDownloaded {
                index,
                digest,
                size,
                cached,
                transferred,
                resumed_from,
                seconds,
            } => {
                if *cached {
                    format!(
                        "layer {}/{n} {} cached ({})",
                        index + 1,
                        short(digest),
                        human(*size)
                    )
                } else if *resumed_from > 0 {
                    format!(
                        "layer {}/{n} {} downloaded {} in {seconds:.2}s (resumed at {})",
                        index + 1,
                        short(digest),
                        human(*transferred),
                        human(*resumed_from)
                    )
                } else {
                    format!(
                        "layer {}/{n} {} downloaded {} in {seconds:.2}s",
                        index + 1,
                        short(digest),
                        human(*transferred)
                    )
                }
            }
            Event::LayerApplied {
                index,
                digest,
                seconds,
                stats,
            } => format!(
                "layer {}/{n} {} applied in {seconds:.2}s: {} entries, {} written{}",
                index + 1,
                short(digest),
                stats.entries,
                human(stats.bytes),
                if stats.whiteouts + stats.opaque_dirs > 0 {
                    format!(", {} whiteouts", stats.whiteouts + stats.opaque_dirs)
                } else {
                    String::new()
                }
            ),
            Event::Done {
                target,
                path,
                cached_layers,
                layers,
                transferred_bytes,
                seconds,
                ..
            } => format!(
                "{target} ready at {path} in {seconds:.2}s ({} transferred, {cached_layers}/{layers} layers cached)",
                human(*transferred_bytes)
            ),
            Event::Error { message } => format!("error: {message}"),
        };
        eprintln!("{line}");
    }
}

/// Progress bars on stderr (indicatif): one per layer plus the unpacking status.
pub struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<usize, ProgressBar>>,
    layers: Mutex<usize>,
}

impl Bars {
    pub fn new() -> Bars {
        Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)),
            bars: Mutex::new(HashMap::new()),
            layers: Mutex::new(0),
        }
    }

    fn style() -> ProgressStyle {
        ProgressStyle::with_template(
            "{prefix} [{bar:30.cyan/blue}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> ")
    }
}

impl Default for Bars {
    fn default() -> Self {
        Bars::new()
    }
}

impl Reporter for Bars {
    fn event(&self, event: &Event) {
        let n = *self.layers.lock().unwrap();
        match event {
            Event::Resolved { .. } => {
                if let Event::Resolved { layers, .. } = event {
                    *self.layers.lock().unwrap() = *layers;
                }
                let _ = self.multi.println(PlainLines::line_for(event));
            }
            Event::LayerStart {
                index,
                digest,
                size,
                cached,
            } => {
                let bar = self.multi.add(ProgressBar::new(*size));
                bar.set_style(Bars::style());
                bar.set_prefix(format!("{:>2}/{n} {}", index + 1, short(digest)));
                if *cached {
                    bar.set_position(*size);
                    bar.set_message("cached");
                } else {
                    bar.set_message("downloading");
                    bar.enable_steady_tick(Duration::from_millis(200));
                }
                self.bars.lock().unwrap().insert(*index, bar);
            }
            Event::Progress { index, bytes, .. } => {
                if let Some(bar) = self.bars.lock().unwrap().get(index) {
                    bar.set_position(*bytes);
                }
            }
            Event::LayerDownloaded {
                index,
                size,
                cached,
                ..
            } => {
                if let Some(bar) = self.bars.lock().unwrap().get(index) {
                    bar.disable_steady_tick();
                    bar.set_position(*size);
                    if !cached {
                        bar.set_message("downloaded");
                    }
                }
            }
            Event::LayerApplied { index, stats, .. } => {
                if let Some(bar) = self.bars.lock().unwrap().get(index) {
                    bar.finish_with_message(format!("applied ({} entries)", stats.entries));
                }
            }
            Event::Done { .. } | Event::Error { .. } => {
                for (_, bar) in self.bars.lock().unwrap().drain() {
                    bar.abandon();
                }
                let _ = self.multi.clear();
                eprintln!("{}", PlainLines::line_for(event));
            }
        }
    }
}

impl PlainLines {
    /// The plain line for a summary event.
    fn line_for(event: &Event) -> String {
        match event {
            Event::Resolved {
                reference,
                manifest_digest,
                platform,
                layers,
                total_bytes,
            } => format!(
                "{reference}: {platform} manifest {manifest_digest}, {layers} layers, {}",
                human(*total_bytes)
            ),
            Event::Done {
                target,
                path,
                cached_layers,
                layers,
                transferred_bytes,
                seconds,
                ..
            } => format!(
                "{target} ready at {path} in {seconds:.2}s ({} transferred, {cached_layers}/{layers} layers cached)",
                human(*transferred_bytes)
            ),
            Event::Error { message } => format!("error: {message}"),
            other => format!("{other:?}"),
        }
    }
}
