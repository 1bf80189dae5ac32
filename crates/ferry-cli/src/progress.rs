//! Progress displays for `ferry copy`: bars on a terminal, JSON lines for machines.
//!
//! Sinks are called from the copy's tasks: they must stay cheap and never block on the
//! copy, and never print anything but progress (no credentials can reach them).

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;

use ferry_oci::progress::{BlobOutcome, ProgressEvent, ProgressSink};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// One JSON object per event on stdout.
pub struct JsonProgress;

impl ProgressSink for JsonProgress {
    fn event(&self, event: ProgressEvent) {
        if let Ok(line) = serde_json::to_string(&event) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
        }
    }
}

/// A bar per active blob and a total bar, on stderr.
pub struct TerminalProgress {
    multi: MultiProgress,
    total: ProgressBar,
    blobs: Mutex<HashMap<String, ProgressBar>>,
}

fn bytes_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

impl TerminalProgress {
    pub fn new() -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let total = multi.add(ProgressBar::new(0));
        total.set_style(bytes_style(
            "total   [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ));
        TerminalProgress {
            multi,
            total,
            blobs: Mutex::new(HashMap::new()),
        }
    }

    pub fn finish(&self) {
        if let Ok(mut blobs) = self.blobs.lock() {
            for (_, bar) in blobs.drain() {
                bar.finish_and_clear();
            }
        }
        self.total.finish();
    }
}

impl ProgressSink for TerminalProgress {
    fn event(&self, event: ProgressEvent) {
        match event {
            ProgressEvent::Plan { total_bytes, .. } => self.total.set_length(total_bytes),
            ProgressEvent::BlobStarted { digest, size } => {
                let bar = self
                    .multi
                    .insert_before(&self.total, ProgressBar::new(size));
                bar.set_style(bytes_style("{msg:19} [{bar:30}] {bytes}/{total_bytes}"));
                bar.set_message(digest.hex().chars().take(12).collect::<String>());
                if let Ok(mut blobs) = self.blobs.lock() {
                    blobs.insert(digest.to_string(), bar);
                }
            }
            ProgressEvent::BlobProgress { digest, bytes } => {
                self.total.inc(bytes);
                if let Ok(blobs) = self.blobs.lock() {
                    if let Some(bar) = blobs.get(digest.as_str()) {
                        bar.inc(bytes);
                    }
                }
            }
            ProgressEvent::BlobFinished {
                digest,
                size,
                outcome,
            } => {
                if outcome != BlobOutcome::Copied {
                    // No byte moved, but it counts toward the total.
                    self.total.inc(size);
                }
                if let Ok(mut blobs) = self.blobs.lock() {
                    if let Some(bar) = blobs.remove(digest.as_str()) {
                        bar.finish_and_clear();
                    }
                }
            }
            ProgressEvent::Retrying {
                what,
                attempt,
                error,
            } => {
                let _ = self
                    .multi
                    .println(format!("retrying {what} (attempt {attempt}): {error}"));
            }
            ProgressEvent::ManifestWritten { .. } => {}
        }
    }
}
