//! `cargo xtask kernels`: the eBPF programs verified, and the packet
//! fixtures run, on older kernels than the machine's, each booted under
//! qemu from a Debian kernel package.
//!
//! For each kernel: its package is fetched with apt from the Debian mirror the
//! machine's own sources name (an apt configuration of its own under
//! `target/kernels/`, the machine's left untouched), the kernel image is
//! taken out of it, and booted with a small initramfs (busybox, the
//! `kernel_check` example, the `l4_fixtures` test binary, their shared
//! libraries, `ip`, and the kernel's own veth, `sch_ingress` (clsact) and
//! `cls_bpf` modules) with no network device,
//! the console on serial. What the guest prints (`kernels: ...` lines, the
//! test harness's summary) is read back from the serial log. The machine's
//! own kernel runs the same two binaries directly.
//!
//! qemu runs under TCG (emulation): KVM is not usable on these machines
//! (a guest hangs before its first message).

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

use crate::cmd::{self, workspace_root};

/// The six programs, in the order `kernel_check` loads them: loaded as
/// is, then with SNAT addresses set (`+snat`).
pub const PROGRAMS: [&str; 12] = [
    "ingress_xdp",
    "ingress_xdp_l4",
    "ingress_xdp_l4_new",
    "ingress_tc_egress",
    "ingress_xdp_icmp6",
    "ingress_tc_icmp6",
    "ingress_xdp+snat",
    "ingress_xdp_l4+snat",
    "ingress_xdp_l4_new+snat",
    "ingress_tc_egress+snat",
    "ingress_xdp_icmp6+snat",
    "ingress_tc_icmp6+snat",
];

/// A Debian release whose cloud kernel is booted.
#[derive(Clone, Copy, Debug)]
pub struct Release {
    /// Debian's codename (the apt suite).
    pub suite: &'static str,
    /// Debian's version, for the table.
    pub debian: &'static str,
}

/// Oldest first. Debian 11's 5.10 is older than the 5.15 the project
/// promises (no Debian release carries 5.15): the verifier only got more
/// precise since, so what 5.10 verifies, 5.15 does too.
pub const RELEASES: &[Release] = &[
    Release {
        suite: "bullseye",
        debian: "11",
    },
    Release {
        suite: "bookworm",
        debian: "12",
    },
    Release {
        suite: "bookworm-backports",
        debian: "12 backports",
    },
];

/// Seconds one guest may run (boot, load, fixtures) before it is killed.
const GUEST_TIMEOUT_S: u32 = 1500;
/// The same with `--verify-only` (loads only: minutes under emulation).
const VERIFY_TIMEOUT_S: u32 = 900;
/// Boots per kernel: an emulated guest has been seen hanging at boot
/// once in a while (before `/init` ran), so one that did not reach its last
/// line is booted once more.
const BOOTS: u32 = 2;

/// What one kernel did with the programs and the fixtures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelResult {
    /// `uname -r` as the kernel reported it.
    pub release: Option<String>,
    /// Per program, in [`PROGRAMS`] order: `None` if never reported.
    pub programs: Vec<(String, Option<ProgramOutcome>)>,
    /// The verifier log's last lines of rejected programs.
    pub log: Vec<String>,
    /// Passed and failed fixtures, if the harness printed its summary.
    pub fixtures: Option<(u32, u32)>,
    /// Names of failed fixtures.
    pub failed: Vec<String>,
    /// The attach checks (`kernel_check`'s `attach` lines): the TC attach
    /// mode and, if it failed, why.
    pub attach: Vec<(String, Option<String>)>,
    /// Whether the guest reached its last line.
    pub finished: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProgramOutcome {
    /// Verified; the count of verified instructions where reported (5.16+).
    Verified(Option<u64>),
    Rejected(String),
}

impl KernelResult {
    /// Whether every program verified, the attach checks ran and passed,
    /// and (unless `verify_only`) every fixture passed.
    pub fn passed(&self, verify_only: bool) -> bool {
        self.finished
            && !self.attach.is_empty()
            && self.attach.iter().all(|(_, failed)| failed.is_none())
            && self
                .programs
                .iter()
                .all(|(_, o)| matches!(o, Some(ProgramOutcome::Verified(_))))
            && (verify_only || matches!(self.fixtures, Some((p, 0)) if p > 0))
    }
}

/// Reads the output of `kernel_check` and of the fixtures' harness (the
/// guest's serial log, or the two outputs on the machine).
pub fn parse_output(out: &str) -> KernelResult {
    let mut result = KernelResult {
        programs: PROGRAMS.iter().map(|p| (p.to_string(), None)).collect(),
        ..KernelResult::default()
    };
    for raw in out.lines() {
        let line = raw.trim_end_matches('\r');
        if let Some(rest) = find_after(line, "kernels: uname ") {
            result.release = Some(rest.trim().to_string());
        } else if let Some(rest) = find_after(line, "kernels: program ") {
            let Some((name, what)) = rest.split_once(' ') else {
                continue;
            };
            let outcome = if let Some(n) = what.strip_prefix("verified ") {
                ProgramOutcome::Verified(n.trim().parse().ok())
            } else if let Some(why) = what.strip_prefix("rejected: ") {
                ProgramOutcome::Rejected(why.trim().to_string())
            } else {
                continue;
            };
            if let Some(slot) = result.programs.iter_mut().find(|(p, _)| p == name) {
                slot.1 = Some(outcome);
            }
        } else if let Some(rest) = find_after(line, "kernels: attach ") {
            let Some((mode, what)) = rest.split_once(' ') else {
                continue;
            };
            if what.starts_with("ok:") {
                result.attach.push((mode.to_string(), None));
            } else if let Some(why) = what.strip_prefix("failed: ") {
                result
                    .attach
                    .push((mode.to_string(), Some(why.trim().to_string())));
            }
        } else if let Some(rest) = find_after(line, "kernels: log ") {
            result.log.push(rest.to_string());
        } else if line.contains("kernels: done") {
            result.finished = true;
        } else if let Some(rest) = find_after(line, "test result: ") {
            result.fixtures = parse_summary(rest);
        } else if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|l| l.strip_suffix(" ... FAILED"))
        {
            result.failed.push(name.to_string());
        }
    }
    result
}

fn find_after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|i| &line[i + marker.len()..])
}

/// `ok. 27 passed; 0 failed; 0 ignored; ...` -> (27, 0).
fn parse_summary(rest: &str) -> Option<(u32, u32)> {
    let count = |word: &str| {
        rest.split(';').find_map(|part| {
            let part = part.trim().trim_start_matches("ok.").trim();
            let part = part.trim_start_matches("FAILED.").trim();
            part.strip_suffix(word)?.trim().parse::<u32>().ok()
        })
    };
    Some((count("passed")?, count("failed")?))
}

/// The Debian mirror (`.../debian`) and security mirror
/// (`.../debian-security`) named by the machine's apt sources, in either
/// format; Debian's own hosts if none is found.
pub fn mirrors(sources: &str) -> (String, String) {
    let mut main = None;
    let mut security = None;
    for line in sources.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let uris: Vec<&str> = if let Some(rest) = line.strip_prefix("URIs:") {
            rest.split_whitespace().collect()
        } else if line.starts_with("deb ") {
            line.split_whitespace()
                .filter(|w| w.starts_with("http://") || w.starts_with("https://"))
                .collect()
        } else {
            continue;
        };
        for uri in uris {
            let uri = uri.trim_end_matches('/');
            if uri.ends_with("/debian-security") {
                security.get_or_insert_with(|| uri.to_string());
            } else if uri.ends_with("/debian") {
                main.get_or_insert_with(|| uri.to_string());
            }
        }
    }
    (
        main.unwrap_or_else(|| "http://deb.debian.org/debian".into()),
        security.unwrap_or_else(|| "http://deb.debian.org/debian-security".into()),
    )
}

/// The apt sources for `suite` (main, updates and security; a backports
/// suite alone, so that its kernel is the candidate).
pub fn sources_list(suite: &str, main: &str, security: &str) -> String {
    let key = "[signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]";
    if suite.ends_with("-backports") {
        return format!("deb {key} {main} {suite} main\n");
    }
    format!(
        "deb {key} {main} {suite} main\ndeb {key} {main} {suite}-updates main\ndeb {key} {security} {suite}-security main\n"
    )
}

/// The table printed at the end, one row per kernel.
pub fn table(rows: &[(String, KernelResult)]) -> String {
    let mut out = String::new();
    let header: Vec<String> = std::iter::once("kernel".to_string())
        .chain(PROGRAMS.iter().map(|p| p.to_string()))
        .chain(["attach".to_string(), "l4_fixtures".to_string()])
        .collect();
    let mut lines = vec![header];
    for (label, r) in rows {
        let mut cells = vec![label.clone()];
        for (_, outcome) in &r.programs {
            cells.push(match outcome {
                Some(ProgramOutcome::Verified(Some(n))) => format!("{n} insns"),
                Some(ProgramOutcome::Verified(None)) => "verified".into(),
                Some(ProgramOutcome::Rejected(_)) => "REJECTED".into(),
                None => "-".into(),
            });
        }
        cells.push(if r.attach.is_empty() {
            "-".into()
        } else {
            r.attach
                .iter()
                .map(|(mode, failed)| match failed {
                    None => format!("{mode} ok"),
                    Some(_) => format!("{mode} FAILED"),
                })
                .collect::<Vec<_>>()
                .join(", ")
        });
        cells.push(match r.fixtures {
            Some((p, f)) => format!("{p} passed, {f} failed"),
            None if r.finished => "not run".into(),
            None => "did not finish".into(),
        });
        lines.push(cells);
    }
    let widths: Vec<usize> = (0..lines[0].len())
        .map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0))
        .collect();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}

/// `only`: suites to boot (all of [`RELEASES`] if empty). `verify_only`:
/// load the programs but run no fixture (what `cargo xtask test` does).
pub fn run(only: &[String], verify_only: bool) -> anyhow::Result<()> {
    if let Some(unknown) = only
        .iter()
        .find(|s| !RELEASES.iter().any(|r| r.suite == s.as_str()))
    {
        bail!(
            "unknown suite {unknown}: one of {}",
            RELEASES
                .iter()
                .map(|r| r.suite)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !cmd::is_root() {
        bail!("cargo xtask kernels needs root (the machine's own row loads the programs)");
    }
    crate::setup::ensure_debian_packages(crate::setup::KERNEL_PACKAGES)?;
    let busybox = Path::new("/bin/busybox");
    let root = workspace_root();
    let dir = root.join("target/kernels");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (check, fixtures) = build_binaries(&root)?;

    let mut rows = Vec::new();
    println!("kernels: the machine's kernel");
    let host = host_run(&check, (!verify_only).then_some(fixtures.as_path()))?;
    fs::write(dir.join("host.log"), &host).context("writing host.log")?;
    let host_result = parse_output(&host);
    rows.push((
        format!(
            "{} (this machine)",
            host_result.release.clone().unwrap_or_default()
        ),
        host_result,
    ));

    let sources = ["/etc/apt/sources.list", "/etc/apt/sources.list.d"]
        .iter()
        .flat_map(|p| read_sources(Path::new(p)))
        .collect::<Vec<_>>()
        .join("\n");
    let (main, security) = mirrors(&sources);
    for release in RELEASES
        .iter()
        .filter(|r| only.is_empty() || only.iter().any(|s| s == r.suite))
    {
        println!("kernels: Debian {} ({})", release.debian, release.suite);
        let kernel = fetch_kernel(&dir, release, &main, &security)?;
        let initrd = initramfs(&dir, &kernel, busybox, &check, &fixtures)?;
        let log = dir.join(format!("{}.log", kernel.package));
        let mut result = KernelResult::default();
        for attempt in 1..=BOOTS {
            boot(&kernel.vmlinuz, &initrd, &log, verify_only)?;
            let out = fs::read_to_string(&log)
                .map(|s| s.replace('\0', ""))
                .with_context(|| format!("reading {}", log.display()))?;
            result = parse_output(&out);
            if result.finished {
                break;
            }
            println!("kernels: the guest did not finish (boot {attempt} of {BOOTS})");
        }
        rows.push((
            format!(
                "{} (Debian {})",
                result.release.clone().unwrap_or(kernel.package.clone()),
                release.debian
            ),
            result,
        ));
    }

    println!();
    print!("{}", table(&rows));
    let mut bad = Vec::new();
    for (label, r) in &rows {
        for (name, outcome) in &r.programs {
            if let Some(ProgramOutcome::Rejected(why)) = outcome {
                println!("{label}: {name} rejected: {why}");
            }
        }
        for line in &r.log {
            println!("{label}:   {line}");
        }
        for (mode, failed) in &r.attach {
            if let Some(why) = failed {
                println!("{label}: attach {mode} failed: {why}");
            }
        }
        for name in &r.failed {
            println!("{label}: fixture failed: {name}");
        }
        if !r.passed(verify_only) {
            bad.push(label.clone());
        }
    }
    println!("kernels: serial logs in {}", dir.display());
    if !bad.is_empty() {
        bail!("not verified or not passing on: {}", bad.join(", "));
    }
    println!("kernels: all passed");
    Ok(())
}

fn read_sources(path: &Path) -> Vec<String> {
    if path.is_dir() {
        let Ok(entries) = fs::read_dir(path) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        files
            .iter()
            .filter_map(|p| fs::read_to_string(p).ok())
            .collect()
    } else {
        fs::read_to_string(path).ok().into_iter().collect()
    }
}

/// Builds `kernel_check` and the `l4_fixtures` test binary (debug, as
/// `cargo test` does); returns their paths.
fn build_binaries(root: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    println!("kernels: building kernel_check and l4_fixtures");
    cmd::run(
        Command::new("cargo")
            .args(["build", "--quiet", "-p", "ingress-userspace"])
            .args(["--example", "kernel_check"])
            .current_dir(root),
    )
    .context("building kernel_check (missing toolchain? run `cargo xtask setup`)")?;
    let out = cmd::output(
        Command::new("cargo")
            .args(["test", "-p", "ingress-userspace", "--test", "l4_fixtures"])
            .args(["--no-run"])
            .current_dir(root),
    )
    .context("building l4_fixtures")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let fixtures = stderr
        .lines()
        .find_map(|l| {
            let l = l.trim();
            l.strip_prefix("Executable tests/l4_fixtures.rs (")?
                .strip_suffix(')')
        })
        .context("cargo did not name the l4_fixtures binary")?;
    Ok((
        root.join("target/debug/examples/kernel_check"),
        root.join(fixtures),
    ))
}

/// The same two binaries on the machine's kernel; their output as one text.
fn host_run(check: &Path, fixtures: Option<&Path>) -> anyhow::Result<String> {
    let mut out = String::new();
    let uname = cmd::output(Command::new("uname").arg("-r"))?;
    let _ = writeln!(
        out,
        "kernels: uname {}",
        String::from_utf8_lossy(&uname.stdout).trim()
    );
    let mut commands = vec![Command::new(check)];
    if let Some(fixtures) = fixtures {
        let mut c = Command::new(fixtures);
        c.arg("--test-threads=1");
        commands.push(c);
    }
    for bin in &mut commands {
        let o = bin
            .output()
            .with_context(|| format!("running {:?}", bin.get_program()))?;
        out.push_str(&String::from_utf8_lossy(&o.stdout));
        out.push_str(&String::from_utf8_lossy(&o.stderr));
    }
    out.push_str("kernels: done\n");
    Ok(out)
}

struct Kernel {
    package: String,
    vmlinuz: PathBuf,
    /// The kernel's module tree (`lib/modules/<version>`).
    modules: PathBuf,
}

/// Fetches (once; kept under `target/kernels/`) the release's cloud kernel
/// package and unpacks it.
fn fetch_kernel(
    dir: &Path,
    release: &Release,
    main: &str,
    security: &str,
) -> anyhow::Result<Kernel> {
    let apt = dir.join("apt").join(release.suite);
    for sub in ["lists/partial", "cache/archives/partial"] {
        fs::create_dir_all(apt.join(sub)).context("creating the apt directories")?;
    }
    let list = apt.join("sources.list");
    fs::write(&list, sources_list(release.suite, main, security))
        .context("writing the sources list")?;
    let opts = [
        format!("-o=Dir::Etc::SourceList={}", list.display()),
        "-o=Dir::Etc::SourceParts=/dev/null".into(),
        format!("-o=Dir::State::Lists={}", apt.join("lists").display()),
        format!("-o=Dir::Cache={}", apt.join("cache").display()),
        "-o=APT::Sandbox::User=root".into(),
    ];
    let debs = dir.join("debs");
    fs::create_dir_all(&debs).context("creating target/kernels/debs")?;
    let existing = |pattern: &str| -> Option<PathBuf> {
        let mut found: Vec<PathBuf> = fs::read_dir(&debs)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(pattern) && n.ends_with(".deb"))
            })
            .collect();
        found.sort();
        found.pop()
    };
    let prefix = format!("linux-image-{}.", kernel_series(release.suite));
    let deb = match existing(&prefix) {
        Some(deb) => deb,
        None => {
            println!("kernels: apt-get update for {}", release.suite);
            cmd::output(Command::new("apt-get").args(&opts).args(["-q", "update"]))
                .with_context(|| format!("apt-get update for {}", release.suite))?;
            let depends = cmd::output(
                Command::new("apt-cache")
                    .args(&opts)
                    .args(["depends", "linux-image-cloud-amd64"]),
            )
            .context("resolving linux-image-cloud-amd64")?;
            let text = String::from_utf8_lossy(&depends.stdout);
            let package = text
                .lines()
                .find_map(|l| {
                    l.trim()
                        .strip_prefix("Depends: ")
                        .filter(|p| p.starts_with("linux-image-"))
                })
                .context("linux-image-cloud-amd64 depends on no kernel image")?
                .to_string();
            println!("kernels: downloading {package}");
            cmd::output(
                Command::new("apt-get")
                    .args(&opts)
                    .args(["-q", "download", &package])
                    .current_dir(&debs),
            )
            .with_context(|| format!("downloading {package}"))?;
            existing(&package).with_context(|| format!("{package} was not downloaded"))?
        }
    };
    let package = deb
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split('_').next())
        .context("a kernel package file name without a package name")?
        .to_string();
    let unpacked = dir.join("unpacked").join(&package);
    if !unpacked.join("boot").is_dir() {
        fs::create_dir_all(&unpacked).context("creating the unpack directory")?;
        cmd::output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))
            .with_context(|| format!("unpacking {}", deb.display()))?;
    }
    let version = package.trim_start_matches("linux-image-");
    Ok(Kernel {
        vmlinuz: unpacked.join("boot").join(format!("vmlinuz-{version}")),
        modules: unpacked.join("lib/modules").join(version),
        package,
    })
}

/// The kernel series of a release's cloud kernel, to find a cached package.
fn kernel_series(suite: &str) -> &'static str {
    match suite {
        "bullseye" => "5.10",
        "bookworm" => "6.1",
        "bookworm-backports" => "6.12",
        _ => "",
    }
}

/// The guest's /init: mounts, veth, the two binaries, power off.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mkdir -p /var
ln -s /run /var/run
mount -t bpf bpf /sys/fs/bpf
for m in veth sch_ingress cls_bpf; do insmod /modules/$m.ko* 2>/dev/null; done
ip link set lo up
echo "kernels: uname $(uname -r)"
if grep -q kernels.verify_only /proc/cmdline; then
    /kernel_check
    echo "kernels: l4_fixtures not run: verification only"
elif /kernel_check; then
    /l4_fixtures --test-threads=1
    echo "kernels: l4_fixtures exit $?"
else
    echo "kernels: l4_fixtures not run: a program was rejected"
fi
echo "kernels: done"
poweroff -f
"#;

/// Builds the guest's initramfs for `kernel`; returns its path.
fn initramfs(
    dir: &Path,
    kernel: &Kernel,
    busybox: &Path,
    check: &Path,
    fixtures: &Path,
) -> anyhow::Result<PathBuf> {
    let stage = dir.join("initramfs").join(&kernel.package);
    if stage.exists() {
        fs::remove_dir_all(&stage).context("clearing the initramfs staging directory")?;
    }
    for sub in [
        "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "run", "modules", "etc",
    ] {
        fs::create_dir_all(stage.join(sub)).context("creating the initramfs tree")?;
    }
    fs::copy(busybox, stage.join("bin/busybox")).context("copying busybox")?;
    let ip = Path::new("/usr/bin/ip");
    let ip = if ip.exists() {
        ip.to_path_buf()
    } else {
        PathBuf::from("/sbin/ip")
    };
    // The real ip (namespaces, veth), first in the guest's PATH, before
    // busybox's applet.
    let binaries = [
        (check.to_path_buf(), stage.join("kernel_check")),
        (fixtures.to_path_buf(), stage.join("l4_fixtures")),
        (ip.clone(), stage.join("usr/sbin/ip")),
    ];
    for (from, to) in &binaries {
        fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
        // Debug info is most of a test binary's size; the guest needs none.
        let _ = Command::new("strip").arg("--strip-debug").arg(to).status();
        for lib in shared_libraries(from)? {
            let dest = stage.join(lib.strip_prefix("/").unwrap_or(&lib));
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent).context("creating a library directory")?;
            }
            fs::copy(&lib, &dest).with_context(|| format!("copying {}", lib.display()))?;
        }
    }
    // Compressed on some kernels; the namespace fixtures need veth, the
    // attach check the clsact qdisc and the bpf classifier too (modules in
    // Debian's builds).
    for (dir, module) in [
        ("drivers/net", "veth"),
        ("net/sched", "sch_ingress"),
        ("net/sched", "cls_bpf"),
    ] {
        for name in [format!("{module}.ko"), format!("{module}.ko.xz")] {
            let from = kernel.modules.join("kernel").join(dir).join(&name);
            if from.exists() {
                fs::copy(&from, stage.join("modules").join(&name))
                    .with_context(|| format!("copying {}", from.display()))?;
            }
        }
    }
    let init = stage.join("init");
    fs::write(&init, INIT).context("writing init")?;
    cmd::output(Command::new("chmod").arg("755").arg(&init))?;
    let cpio = dir.join(format!("{}.cpio", kernel.package));
    cmd::output(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "find . | cpio --quiet -o -H newc -R 0:0 > '{}'",
                cpio.display()
            ))
            .current_dir(&stage),
    )
    .context("packing the initramfs")?;
    Ok(cpio)
}

/// The shared libraries `ldd` names for `bin`, the loader included.
fn shared_libraries(bin: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = cmd::output(Command::new("ldd").arg(bin))
        .with_context(|| format!("ldd {}", bin.display()))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// Boots the guest (TCG, one CPU, no network device), the serial console
/// written to `log`; killed after [`GUEST_TIMEOUT_S`] ([`VERIFY_TIMEOUT_S`]
/// with `verify_only`).
fn boot(vmlinuz: &Path, initrd: &Path, log: &Path, verify_only: bool) -> anyhow::Result<()> {
    let limit = if verify_only {
        VERIFY_TIMEOUT_S
    } else {
        GUEST_TIMEOUT_S
    };
    let append = format!(
        "console=ttyS0 panic=-1 quiet{}",
        if verify_only {
            " kernels.verify_only"
        } else {
            ""
        }
    );
    println!(
        "kernels: booting {} (emulated: this takes minutes)",
        vmlinuz.display()
    );
    let status = Command::new("timeout")
        .args(["--foreground", &limit.to_string()])
        .arg("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "2048"])
        .args([
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
            "-monitor",
            "none",
        ])
        .args(["-serial", &format!("file:{}", log.display())])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &append])
        .status()
        .context("spawning qemu-system-x86_64")?;
    if !status.success() {
        println!("kernels: qemu exited with {status} (timed out after {limit}s?)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUEST: &str = "\
[    6.1] Run /init as init process\r
kernels: uname 5.10.0-46-cloud-amd64\r
kernels: program ingress_xdp rejected: Permission denied (os error 13); BPF program is too large. Processed 1000001 insn\r
kernels: log from 12 to 40: R0=inv1\r
kernels: log BPF program is too large. Processed 1000001 insn\r
kernels: program ingress_tc_egress verified ?\r
kernels: program ingress_xdp_icmp6 verified 64572\r
kernels: program ingress_tc_icmp6 verified 58575\r
kernels: attach netlink ok: 3 frames a step counted once each (attached, kept, adopted; twice with a second filter), none after detach\r
test l4::new_flow ... ok\r
test l4::icmp ... FAILED\r
test result: FAILED. 26 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 3.2s\r
kernels: done\r
";

    #[test]
    fn reads_a_guest_log() {
        let r = parse_output(GUEST);
        assert_eq!(r.release.as_deref(), Some("5.10.0-46-cloud-amd64"));
        assert!(
            matches!(&r.programs[0].1, Some(ProgramOutcome::Rejected(w)) if w.contains("too large"))
        );
        let outcome = |name: &str| {
            r.programs
                .iter()
                .find(|(p, _)| p == name)
                .and_then(|(_, o)| o.clone())
        };
        assert_eq!(
            outcome("ingress_tc_egress"),
            Some(ProgramOutcome::Verified(None))
        );
        assert_eq!(
            outcome("ingress_xdp_icmp6"),
            Some(ProgramOutcome::Verified(Some(64572)))
        );
        assert_eq!(r.log.len(), 2);
        assert_eq!(r.fixtures, Some((26, 1)));
        assert_eq!(r.failed, ["l4::icmp"]);
        assert_eq!(r.attach, [("netlink".to_string(), None)]);
        assert!(r.finished);
        assert!(!r.passed(false));
        assert!(!r.passed(true));
    }

    #[test]
    fn a_clean_run_passes_and_a_cut_one_does_not() {
        let ok = "kernels: uname 6.1.0\n\
            kernels: program ingress_xdp verified 1\n\
            kernels: program ingress_xdp_l4 verified 11\n\
            kernels: program ingress_xdp_l4_new verified 12\n\
            kernels: program ingress_tc_egress verified 2\n\
            kernels: program ingress_xdp_icmp6 verified 3\n\
            kernels: program ingress_tc_icmp6 verified 4\n\
            kernels: program ingress_xdp+snat verified 5\n\
            kernels: program ingress_xdp_l4+snat verified 15\n\
            kernels: program ingress_xdp_l4_new+snat verified 16\n\
            kernels: program ingress_tc_egress+snat verified 6\n\
            kernels: program ingress_xdp_icmp6+snat verified 7\n\
            kernels: program ingress_tc_icmp6+snat verified 8\n\
            kernels: attach netlink ok: 9 frames\n\
            test result: ok. 27 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n\
            kernels: done\n";
        assert!(parse_output(ok).passed(false));
        let cut = ok.replace("kernels: done\n", "");
        assert!(!parse_output(&cut).passed(true));
        let none = ok.replace("27 passed", "0 passed");
        assert!(!parse_output(&none).passed(false));
        let verified = ok.replace(
            "test result: ok. 27 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n",
            "",
        );
        assert!(parse_output(&verified).passed(true));
        assert!(!parse_output(&verified).passed(false));
        let half = verified.replace("kernels: program ingress_xdp+snat verified 5\n", "");
        assert!(!parse_output(&half).passed(true));
        let unattached = verified.replace("kernels: attach netlink ok: 9 frames\n", "");
        assert!(!parse_output(&unattached).passed(true));
        let failed = verified.replace(
            "attach netlink ok: 9 frames",
            "attach netlink failed: after the restart: 3 frames counted 6 times",
        );
        let r = parse_output(&failed);
        assert!(!r.passed(true));
        assert!(r.attach[0].1.as_deref().unwrap().contains("6 times"));
    }

    #[test]
    fn finds_the_mirrors_in_either_format() {
        let deb822 = "Types: deb\n# http://snapshot.example/debian\nURIs: http://mirror.example/debian\nSuites: bookworm\n\nTypes: deb\nURIs: http://mirror.example/debian-security/\n";
        assert_eq!(
            mirrors(deb822),
            (
                "http://mirror.example/debian".to_string(),
                "http://mirror.example/debian-security".to_string()
            )
        );
        let one_line = "deb [arch=amd64] http://m.example/debian bookworm main\n";
        assert_eq!(mirrors(one_line).0, "http://m.example/debian");
        assert_eq!(
            mirrors("").1,
            "http://deb.debian.org/debian-security".to_string()
        );
    }

    #[test]
    fn the_table_has_a_row_per_kernel() {
        let r = parse_output(GUEST);
        let t = table(&[("5.10".into(), r)]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("kernel"));
        assert!(lines[1].contains("REJECTED"));
        assert!(lines[1].contains("64572 insns"));
        assert!(lines[1].contains("26 passed, 1 failed"));
        assert!(lines[0].contains("attach"));
        assert!(lines[1].contains("netlink ok"));
    }
}
