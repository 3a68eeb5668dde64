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
    ManifestCache::default().load(paths)
}

/// What identifies a file's contents without reading it: a rename-over gives
/// a new inode, an edit a new modification time or length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    inode: u64,
    len: u64,
    modified: Option<std::time::SystemTime>,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        inode: m.ino(),
        len: m.len(),
        modified: m.modified().ok(),
    })
}

struct Parsed {
    stamp: Stamp,
    state: ClusterState,
    diags: Vec<Diagnostic>,
}

/// Parsed files kept between reloads, so that a change to one small file
/// among many large ones re-parses only that file.
#[derive(Default)]
pub struct ManifestCache {
    files: std::collections::HashMap<PathBuf, Parsed>,
}

impl ManifestCache {
    /// Like [`load`], re-reading only files whose stamp changed.
    pub fn load(&mut self, paths: &[PathBuf]) -> (ClusterState, Vec<Diagnostic>) {
        let mut diags = Vec::new();
        let mut files = Vec::new();
        for p in paths {
            collect(p, &mut files, &mut diags);
        }
        let mut fresh = std::collections::HashMap::new();
        for f in files {
            let st = stamp(&f);
            let cached = self.files.remove(&f).filter(|c| Some(c.stamp) == st);
            let parsed = match (cached, st) {
                (Some(c), _) => c,
                (None, Some(st)) => {
                    let mut state = ClusterState::default();
                    let mut d = Vec::new();
                    match std::fs::read_to_string(&f) {
                        Ok(text) => parse_into(&f.display().to_string(), &text, &mut state, &mut d),
                        Err(e) => d.push(Diagnostic::error(
                            format!("file {}", f.display()),
                            "",
                            e.to_string(),
                        )),
                    }
                    Parsed {
                        stamp: st,
                        state,
                        diags: d,
                    }
                }
                (None, None) => {
                    diags.push(Diagnostic::error(
                        format!("file {}", f.display()),
                        "",
                        "vanished while reading",
                    ));
                    continue;
                }
            };
            fresh.insert(f, parsed);
        }
        self.files = fresh;
        let mut names: Vec<&PathBuf> = self.files.keys().collect();
        names.sort();
        let mut state = ClusterState::default();
        for name in names {
            let p = &self.files[name];
            diags.extend(p.diags.iter().cloned());
            merge(&mut state, &p.state, name, &mut diags);
        }
        (state, diags)
    }
}

/// Adds `from` (one file's objects) to `into`; an object defined in two
/// files keeps the later file's definition, as one multi-document file would.
fn merge(into: &mut ClusterState, from: &ClusterState, file: &Path, diags: &mut Vec<Diagnostic>) {
    fn add<K: Ord + Clone + std::fmt::Debug, V: Clone>(
        into: &mut std::collections::BTreeMap<K, V>,
        from: &std::collections::BTreeMap<K, V>,
        kind: &str,
        file: &Path,
        diags: &mut Vec<Diagnostic>,
    ) {
        for (k, v) in from {
            if into.insert(k.clone(), v.clone()).is_some() {
                diags.push(Diagnostic::warning(
                    format!("file {}", file.display()),
                    "",
                    format!("{kind} {k:?} is defined more than once; the last definition is used"),
                ));
            }
        }
    }
    add(
        &mut into.ingress_classes,
        &from.ingress_classes,
        "IngressClass",
        file,
        diags,
    );
    add(&mut into.ingresses, &from.ingresses, "Ingress", file, diags);
    add(&mut into.services, &from.services, "Service", file, diags);
    add(
        &mut into.endpoint_slices,
        &from.endpoint_slices,
        "EndpointSlice",
        file,
        diags,
    );
    add(&mut into.secrets, &from.secrets, "Secret", file, diags);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_rereads_only_changed_files_and_keeps_the_rest() {
        let dir = std::env::temp_dir().join(format!("ingress-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let svc = |n: &str| format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {n}}}\n");
        std::fs::write(dir.join("a.yaml"), svc("a")).unwrap();
        std::fs::write(dir.join("b.yaml"), svc("b")).unwrap();
        let mut cache = ManifestCache::default();
        let (s, d) = cache.load(std::slice::from_ref(&dir));
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(s.services.len(), 2);
        // Replace b by rename-over, add c, remove a.
        std::fs::write(dir.join(".b.tmp"), svc("b2")).unwrap();
        std::fs::rename(dir.join(".b.tmp"), dir.join("b.yaml")).unwrap();
        std::fs::write(dir.join("c.yaml"), svc("c")).unwrap();
        std::fs::remove_file(dir.join("a.yaml")).unwrap();
        let (s, _) = cache.load(std::slice::from_ref(&dir));
        let names: Vec<_> = s.services.keys().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["b2", "c"]);
        // A duplicate across files is reported, as within one file.
        std::fs::write(dir.join("d.yaml"), svc("c")).unwrap();
        let (s, d) = cache.load(std::slice::from_ref(&dir));
        assert_eq!(s.services.len(), 2);
        assert_eq!(d.len(), 1);
        assert!(d[0].message.contains("more than once"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
