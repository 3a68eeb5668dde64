//! Standalone mode: manifests from files and directories, watched for
//! changes. Every change reloads all files into a fresh ClusterState, which
//! makes edits, atomic rename-overs, new and removed files all the same case.

use std::path::{Path, PathBuf};

use anyhow::Context;
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::manifest::parse_into;
use crate::model::{ClusterState, Diagnostic};

/// Whether a directory entry is a manifest: `.yaml`, `.yml` or `.json`, not
/// hidden (ConfigMap volumes keep their real files under `..data`).
fn is_manifest(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'));
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    !hidden && matches!(ext, "yaml" | "yml" | "json")
}

fn collect(path: &Path, out: &mut Vec<PathBuf>, diags: &mut Vec<Diagnostic>) {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = match std::fs::read_dir(path) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) => {
                diags.push(Diagnostic::error(
                    format!("directory {}", path.display()),
                    "",
                    e.to_string(),
                ));
                return;
            }
        };
        entries.sort();
        for e in entries {
            if e.is_dir() {
                let hidden = e
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'));
                if !hidden {
                    collect(&e, out, diags);
                }
            } else if is_manifest(&e) {
                out.push(e);
            }
        }
    } else if path.exists() {
        out.push(path.to_path_buf());
    } else {
        diags.push(Diagnostic::error(
            format!("path {}", path.display()),
            "",
            "does not exist",
        ));
    }
}

/// Reads every manifest under `paths`. Unreadable files and bad documents
/// become diagnostics; the rest is loaded.
pub fn load(paths: &[PathBuf]) -> (ClusterState, Vec<Diagnostic>) {
    let mut state = ClusterState::default();
    let mut diags = Vec::new();
    let mut files = Vec::new();
    for p in paths {
        collect(p, &mut files, &mut diags);
    }
    for f in files {
        match std::fs::read_to_string(&f) {
            Ok(text) => parse_into(&f.display().to_string(), &text, &mut state, &mut diags),
            Err(e) => diags.push(Diagnostic::error(
                format!("file {}", f.display()),
                "",
                e.to_string(),
            )),
        }
    }
    (state, diags)
}

/// Watches `paths` (a file through its directory, so that a rename-over is
/// seen) and sends a unit on every change. Keep the watcher alive as long as
/// events are wanted.
pub fn watch(
    paths: &[PathBuf],
) -> anyhow::Result<(RecommendedWatcher, mpsc::UnboundedReceiver<()>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(e) = event
            && !matches!(e.kind, notify::EventKind::Access(_))
        {
            let _ = tx.send(());
        }
    })
    .context("creating the file watcher")?;
    for p in paths {
        let (target, mode) = if p.is_dir() {
            (p.clone(), RecursiveMode::Recursive)
        } else {
            let parent = p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            (parent.to_path_buf(), RecursiveMode::NonRecursive)
        };
        watcher
            .watch(&target, mode)
            .with_context(|| format!("watching {}", target.display()))?;
    }
    Ok((watcher, rx))
}
