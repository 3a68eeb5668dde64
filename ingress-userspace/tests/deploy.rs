//! The Kubernetes manifests under `deploy/`, rendered by the real
//! `kubectl kustomize` and checked against the real agent:
//!
//! - every object validates against the Kubernetes schemas of the targeted
//!   version (`kubernetes-validate`, strict, offline);
//! - the agent container's arguments, after the kubelet's `$(VAR)`
//!   substitution from the flags ConfigMap and the downward API, parse with
//!   the binary's own CLI, and agree with the rest of the pod (ports,
//!   probes, IngressClass, grace period);
//! - the RBAC rules bound to the agent's ServiceAccount are exactly
//!   `ingress_userspace::cluster::access::ACCESS`;
//! - the security settings the API server would refuse, which no schema
//!   says (Bidirectional propagation outside a privileged container).
//!
//! Deliberately broken overlays, built on the real ones in a temporary
//! directory, prove each check fails for what it is meant to catch.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Component, Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use ingress_userspace::{
    cli::{Cli, Command, RunOpts},
    cluster::access::{self, Permission, Scope},
    model::compile::CONTROLLER_NAME,
};
use serde_json::Value;
use xtask::deploy;

/// What the downward API gives the test's imaginary node.
const FIELD_VALUES: &[(&str, &str)] = &[
    ("spec.nodeName", "edge-node-1"),
    ("status.hostIP", "198.18.0.1"),
    ("status.podIP", "198.18.0.1"),
    ("metadata.namespace", "ingress-ebpf"),
];

/// Capabilities the unprivileged agent may add, and why (see
/// deploy/base/daemonset.yaml and docs/deploy.md).
const ALLOWED_CAPABILITIES: &[&str] = &[
    "BPF",
    "PERFMON",
    "NET_ADMIN",
    "SYS_RESOURCE",
    "NET_BIND_SERVICE",
];

// ---------------------------------------------------------------- rendering

fn render(dir: &Path) -> anyhow::Result<Vec<Value>> {
    let yaml = deploy::render(dir)?;
    parse_stream(&yaml)
}

fn parse_stream(yaml: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v: Value = serde::Deserialize::deserialize(doc).context("parsing rendered YAML")?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

fn kind(o: &Value) -> &str {
    o["kind"].as_str().unwrap_or("")
}

fn name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or("")
}

fn namespace(o: &Value) -> &str {
    o["metadata"]["namespace"].as_str().unwrap_or("")
}

fn find<'a>(objs: &'a [Value], k: &str, n: &str) -> Option<&'a Value> {
    objs.iter().find(|o| kind(o) == k && name(o) == n)
}

/// The agent's workload: the one DaemonSet or Deployment.
fn workload(objs: &[Value]) -> anyhow::Result<&Value> {
    let w: Vec<&Value> = objs
        .iter()
        .filter(|o| matches!(kind(o), "DaemonSet" | "Deployment"))
        .collect();
    ensure!(
        w.len() == 1,
        "expected one DaemonSet or Deployment, found {}",
        w.len()
    );
    Ok(w[0])
}

fn agent_container(w: &Value) -> anyhow::Result<&Value> {
    w["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "agent"))
        .context("the workload has no container named agent")
}

// ------------------------------------------------------------ the arguments

/// The container's environment as the kubelet builds it: `envFrom` first,
/// then `env` (which wins), with ConfigMap keys and downward API fields
/// resolved.
fn container_env(objs: &[Value], ns: &str, c: &Value) -> anyhow::Result<BTreeMap<String, String>> {
    let config_map = |n: &str| {
        objs.iter()
            .find(|o| kind(o) == "ConfigMap" && name(o) == n && namespace(o) == ns)
            .with_context(|| format!("ConfigMap {ns}/{n} is referenced but not rendered"))
    };
    let mut env = BTreeMap::new();
    for from in c["envFrom"].as_array().into_iter().flatten() {
        let n = from["configMapRef"]["name"]
            .as_str()
            .context("envFrom without a configMapRef")?;
        let prefix = from["prefix"].as_str().unwrap_or("");
        let data = config_map(n)?["data"]
            .as_object()
            .with_context(|| format!("ConfigMap {n} has no data"))?;
        for (k, v) in data {
            let v = v.as_str().context("ConfigMap values are strings")?;
            env.insert(format!("{prefix}{k}"), v.to_string());
        }
    }
    for e in c["env"].as_array().into_iter().flatten() {
        let n = e["name"]
            .as_str()
            .context("env without a name")?
            .to_string();
        let value = if let Some(v) = e["value"].as_str() {
            v.to_string()
        } else if let Some(path) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            FIELD_VALUES
                .iter()
                .find(|(p, _)| *p == path)
                .map(|(_, v)| v.to_string())
                .with_context(|| format!("env {n}: no test value for fieldRef {path}"))?
        } else if let Some(r) = e["valueFrom"]["configMapKeyRef"].as_object() {
            let cm = r["name"].as_str().unwrap_or("");
            let key = r["key"].as_str().unwrap_or("");
            config_map(cm)?["data"][key]
                .as_str()
                .with_context(|| format!("env {n}: ConfigMap {cm} has no key {key}"))?
                .to_string()
        } else {
            bail!("env {n}: a source this test does not know");
        };
        env.insert(n, value);
    }
    Ok(env)
}

/// The kubelet's expansion of `$(VAR)` in args: `$$` is a literal `$`, a
/// defined variable is replaced, an undefined one is left as written. Here
/// an undefined one is an error, since the agent would get `$(TYPO)` as a
/// value.
fn expand(arg: &str, env: &BTreeMap<String, String>) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut rest = arg;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            let end = inner
                .find(')')
                .with_context(|| format!("unclosed $( in argument {arg:?}"))?;
            let var = &inner[..end];
            let value = env
                .get(var)
                .with_context(|| format!("argument {arg:?} names $({var}), which the container's environment does not define"))?;
            out.push_str(value);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The agent's arguments after the kubelet's `$(VAR)` substitution.
fn agent_args(objs: &[Value]) -> anyhow::Result<Vec<String>> {
    let w = workload(objs)?;
    let c = agent_container(w)?;
    ensure!(
        c["command"].is_null(),
        "the agent container must keep the image's entrypoint (the ingress binary)"
    );
    let env = container_env(objs, namespace(w), c)?;
    c["args"]
        .as_array()
        .context("the agent container has no args")?
        .iter()
        .map(|a| expand(a.as_str().context("args are strings")?, &env))
        .collect()
}

/// Parses the rendered workload's arguments with the binary's CLI.
fn parse_agent_args(objs: &[Value]) -> anyhow::Result<RunOpts> {
    let args = agent_args(objs)?;
    let cli = Cli::try_parse_from(std::iter::once("ingress".to_string()).chain(args.clone()))
        .map_err(|e| {
            anyhow::anyhow!(
                "`ingress {}` is refused by the CLI: {}",
                args.join(" "),
                e.render().to_string().lines().next().unwrap_or("")
            )
        })?;
    match cli.command {
        Command::Run(o) => Ok(*o),
        Command::Check(_) | Command::Bpf(_) => {
            bail!("the agent container must run `ingress run`")
        }
    }
}

fn port_named(c: &Value, port_name: &str) -> Option<u64> {
    c["ports"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == port_name)?["containerPort"]
        .as_u64()
}

/// What the agent's flags say against the rest of the pod and the render.
fn check_pod(objs: &[Value], run: &RunOpts) -> anyhow::Result<()> {
    let w = workload(objs)?;
    let pod = &w["spec"]["template"]["spec"];
    let c = agent_container(w)?;

    ensure!(
        pod["hostNetwork"] == true,
        "the agent needs hostNetwork: true"
    );
    ensure!(
        pod["dnsPolicy"] == "ClusterFirstWithHostNet",
        "a hostNetwork pod resolves cluster names only with dnsPolicy ClusterFirstWithHostNet"
    );
    ensure!(
        run.config.node_name.as_deref() == Some("edge-node-1"),
        "--node-name must come from the downward API (spec.nodeName), got {:?}",
        run.config.node_name
    );

    let class = find(objs, "IngressClass", &run.config.ingress_class).with_context(|| {
        format!(
            "--ingress-class {} names no rendered IngressClass",
            run.config.ingress_class
        )
    })?;
    ensure!(
        class["spec"]["controller"] == CONTROLLER_NAME,
        "IngressClass {} has controller {}, not {CONTROLLER_NAME}",
        run.config.ingress_class,
        class["spec"]["controller"]
    );

    let http = port_named(c, "http").context("no container port named http")?;
    ensure!(
        u64::from(run.http_listen.port()) == http,
        "--http-listen {} but container port http is {http}",
        run.http_listen
    );
    let https = port_named(c, "https").context("no container port named https")?;
    ensure!(
        run.https_listen.0.map(|a| u64::from(a.port())) == Some(https),
        "--https-listen {:?} but container port https is {https}",
        run.https_listen.0
    );
    let admin = port_named(c, "admin").context("no container port named admin")?;
    ensure!(
        u64::from(run.admin_listen.port()) == admin,
        "--admin-listen {} but container port admin is {admin}",
        run.admin_listen
    );
    ensure!(
        run.admin_listen.ip().is_unspecified(),
        "the kubelet probes the node's address: --admin-listen {} would refuse it",
        run.admin_listen
    );
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &c[probe]["httpGet"];
        ensure!(get["path"] == path, "{probe} must GET {path}");
        let port_ok = get["port"] == "admin" || get["port"].as_u64() == Some(admin);
        ensure!(port_ok, "{probe} must use the admin port");
    }

    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .context("terminationGracePeriodSeconds is not set")?;
    let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .context("the preStop hook must sleep (readiness drains before SIGTERM)")?;
    let needed = Duration::from_secs(pre_stop) + run.proxy.drain_timeout;
    ensure!(
        Duration::from_secs(grace) > needed,
        "terminationGracePeriodSeconds {grace} does not cover preStop {pre_stop}s + --drain-timeout {:?}",
        run.proxy.drain_timeout
    );

    check_security(c)?;

    let sa = pod["serviceAccountName"]
        .as_str()
        .context("no serviceAccountName")?;
    ensure!(
        objs.iter()
            .any(|o| kind(o) == "ServiceAccount" && name(o) == sa && namespace(o) == namespace(w)),
        "ServiceAccount {sa} is not rendered"
    );
    let pc = pod["priorityClassName"]
        .as_str()
        .context("no priorityClassName")?;
    ensure!(
        find(objs, "PriorityClass", pc).is_some(),
        "PriorityClass {pc} is not rendered"
    );
    check_budget(objs, w)?;

    check_services(objs, w, c)
}

/// A PodDisruptionBudget covers the agent's pods, in a form the disruption
/// controller can compute for a DaemonSet's pods (an absolute minAvailable:
/// a DaemonSet has no scale for maxUnavailable or percentages).
fn check_budget(objs: &[Value], w: &Value) -> anyhow::Result<()> {
    let labels = &w["spec"]["template"]["metadata"]["labels"];
    let pdb = objs
        .iter()
        .filter(|o| kind(o) == "PodDisruptionBudget" && namespace(o) == namespace(w))
        .find(|o| {
            o["spec"]["selector"]["matchLabels"]
                .as_object()
                .is_some_and(|m| m.iter().all(|(k, v)| labels[k] == *v))
        })
        .context("no PodDisruptionBudget selects the agent's pods")?;
    if kind(w) == "DaemonSet" {
        ensure!(
            pdb["spec"]["maxUnavailable"].is_null() && pdb["spec"]["minAvailable"].is_u64(),
            "PodDisruptionBudget {} must use an absolute minAvailable for a DaemonSet's pods",
            name(pdb)
        );
    }
    Ok(())
}

/// The API server's rules on security settings that no schema states.
fn check_security(c: &Value) -> anyhow::Result<()> {
    let sc = &c["securityContext"];
    let privileged = sc["privileged"] == true;
    let added: Vec<&str> = sc["capabilities"]["add"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if sc["allowPrivilegeEscalation"] == false {
        ensure!(
            !privileged && !added.contains(&"SYS_ADMIN") && !added.contains(&"CAP_SYS_ADMIN"),
            "allowPrivilegeEscalation: false cannot go with privileged or CAP_SYS_ADMIN"
        );
    }
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        if m["mountPropagation"] == "Bidirectional" {
            ensure!(
                privileged,
                "volumeMount {} is Bidirectional, which only a privileged container may have",
                m["name"]
            );
        }
    }
    if !privileged {
        let drops_all = sc["capabilities"]["drop"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x == "ALL"));
        ensure!(
            drops_all,
            "an unprivileged agent drops ALL capabilities first"
        );
        for cap in &added {
            ensure!(
                ALLOWED_CAPABILITIES.contains(cap),
                "capability {cap} is not one the agent needs ({})",
                ALLOWED_CAPABILITIES.join(", ")
            );
        }
    }
    Ok(())
}

/// Every Service selecting the agent reaches a port the container has.
fn check_services(objs: &[Value], w: &Value, c: &Value) -> anyhow::Result<()> {
    let labels = &w["spec"]["template"]["metadata"]["labels"];
    for s in objs.iter().filter(|o| kind(o) == "Service") {
        let selector = s["spec"]["selector"]
            .as_object()
            .with_context(|| format!("Service {} has no selector", name(s)))?;
        if !selector.iter().all(|(k, v)| labels[k] == *v) {
            continue;
        }
        for p in s["spec"]["ports"].as_array().into_iter().flatten() {
            let target = &p["targetPort"];
            let ok = match target {
                Value::String(n) => port_named(c, n).is_some(),
                Value::Number(n) => c["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|cp| cp["containerPort"].as_u64() == n.as_u64()),
                _ => false,
            };
            ensure!(
                ok,
                "Service {} port {} targets {target}, which the agent container does not expose",
                name(s),
                p["port"]
            );
        }
    }
    Ok(())
}

// --------------------------------------------------------------------- RBAC

/// The permissions bound to the agent's ServiceAccount: ClusterRoles through
/// ClusterRoleBindings (cluster-wide), Roles and ClusterRoles through
/// RoleBindings in its namespace (namespaced).
fn granted(objs: &[Value]) -> anyhow::Result<BTreeSet<(Scope, String, String, String)>> {
    let w = workload(objs)?;
    let ns = namespace(w);
    let sa = w["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .context("no serviceAccountName")?;
    let binds_agent = |b: &Value| {
        b["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["kind"] == "ServiceAccount" && s["name"] == sa && s["namespace"] == ns)
    };
    let mut out = BTreeSet::new();
    for b in objs.iter().filter(|o| binds_agent(o)) {
        let (scope, role) = match (kind(b), b["roleRef"]["kind"].as_str()) {
            ("ClusterRoleBinding", Some("ClusterRole")) => {
                let r = b["roleRef"]["name"].as_str().unwrap_or("");
                (Scope::Cluster, find(objs, "ClusterRole", r))
            }
            ("RoleBinding", Some(k)) => {
                ensure!(namespace(b) == ns, "RoleBinding {} is not in {ns}", name(b));
                let r = b["roleRef"]["name"].as_str().unwrap_or("");
                let role = objs.iter().find(|o| {
                    kind(o) == k && name(o) == r && (k == "ClusterRole" || namespace(o) == ns)
                });
                (Scope::Namespaced, role)
            }
            _ => continue,
        };
        let role = role.with_context(|| {
            format!("{} {} binds a role that is not rendered", kind(b), name(b))
        })?;
        for rule in role["rules"].as_array().into_iter().flatten() {
            ensure!(
                rule["nonResourceURLs"].is_null() && rule["resourceNames"].is_null(),
                "{} {}: nonResourceURLs and resourceNames are not in the access table",
                kind(role),
                name(role)
            );
            let list = |f: &str| -> Vec<String> {
                rule[f]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            };
            for g in list("apiGroups") {
                for r in list("resources") {
                    for v in list("verbs") {
                        out.insert((scope, g.clone(), r.clone(), v));
                    }
                }
            }
        }
    }
    Ok(out)
}

fn fmt_perm((scope, g, r, v): &(Scope, String, String, String)) -> String {
    let g = if g.is_empty() { "core" } else { g };
    format!("{v} {g}/{r} ({scope:?})")
}

/// The bound rules are exactly the access table.
fn check_rbac(objs: &[Value]) -> anyhow::Result<()> {
    let granted = granted(objs)?;
    let wanted: BTreeSet<(Scope, String, String, String)> = access::permissions()
        .into_iter()
        .map(|(s, g, r, v): Permission| (s, g.to_string(), r.to_string(), v.to_string()))
        .collect();
    let missing: Vec<String> = wanted.difference(&granted).map(fmt_perm).collect();
    let extra: Vec<String> = granted.difference(&wanted).map(fmt_perm).collect();
    ensure!(
        missing.is_empty() && extra.is_empty(),
        "RBAC differs from cluster::access::ACCESS: missing [{}]; not in the table [{}]",
        missing.join(", "),
        extra.join(", ")
    );
    Ok(())
}

// ---------------------------------------------------------- all of it, once

/// Every check on one rendered overlay; the first failure is returned.
fn check_overlay(dir: &Path) -> anyhow::Result<String> {
    let yaml = deploy::render(dir)?;
    let n = deploy::validate(&yaml)?;
    let objs = parse_stream(&yaml)?;
    let run = parse_agent_args(&objs)?;
    check_pod(&objs, &run)?;
    check_rbac(&objs)?;
    Ok(format!("{n} objects valid, args parse, RBAC exact"))
}

fn rel_name(dir: &Path) -> String {
    dir.strip_prefix(deploy::deploy_dir())
        .unwrap_or(dir)
        .display()
        .to_string()
}

#[test]
fn every_overlay_passes_every_check() {
    let overlays = deploy::overlays().expect("listing deploy/overlays");
    for required in [
        "hostnetwork",
        "nodeport",
        "hostnetwork-privileged",
        "hostnetwork-internal",
    ] {
        assert!(
            overlays.iter().any(|o| o.ends_with(required)),
            "overlay {required} is missing"
        );
    }
    for dir in &overlays {
        match check_overlay(dir) {
            Ok(summary) => println!("deploy/{}: {summary}", rel_name(dir)),
            Err(e) => panic!("deploy/{}: {e:#}", rel_name(dir)),
        }
    }
}

#[test]
fn overlays_say_what_they_promise() {
    let dir = deploy::deploy_dir().join("overlays");
    let host = render(&dir.join("hostnetwork")).expect("rendering hostnetwork");
    let run = parse_agent_args(&host).expect("hostnetwork args");
    assert_eq!(run.http_listen.port(), 80);
    assert_eq!(run.interfaces.len(), 1);
    assert_eq!(
        run.xdp_mode,
        ingress_userspace::cli::XdpModeArg::Native,
        "hostnetwork attaches XDP in driver mode"
    );
    let pod = &workload(&host).expect("workload")["spec"]["template"]["spec"];
    let terms = &pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"][0]["matchExpressions"][0];
    assert_eq!(terms["key"], "ingress.example/role");
    assert_eq!(terms["values"][0], "edge");
    assert!(
        pod["tolerations"]
            .as_array()
            .expect("tolerations")
            .iter()
            .any(|t| t["key"] == "dedicated"
                && t["value"] == "ingress"
                && t["effect"] == "NoSchedule")
    );
    assert!(
        host.iter().all(|o| kind(o) != "Service"),
        "hostnetwork needs no Service"
    );

    let np = render(&dir.join("nodeport")).expect("rendering nodeport");
    let svc = np
        .iter()
        .find(|o| kind(o) == "Service")
        .expect("nodeport renders a Service");
    assert_eq!(svc["spec"]["type"], "NodePort");
    assert_eq!(svc["spec"]["externalTrafficPolicy"], "Local");
    let ports: Vec<(u64, u64)> = svc["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["nodePort"].as_u64().unwrap_or(0),
                p["port"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(ports, [(30080, 80), (30443, 443)]);
    let run = parse_agent_args(&np).expect("nodeport args");
    assert_eq!(
        run.http_listen.port(),
        8080,
        "NodePort mode leaves :80 free"
    );

    // Two node groups, two classes: applied side by side, no object of one
    // overwrites an object of the other.
    let internal = render(&dir.join("hostnetwork-internal")).expect("rendering internal");
    let key = |o: &Value| format!("{}/{}/{}", kind(o), namespace(o), name(o));
    let ours: BTreeSet<String> = host.iter().map(key).collect();
    let clashes: Vec<String> = internal
        .iter()
        .map(key)
        .filter(|k| ours.contains(k))
        .collect();
    assert!(
        clashes.is_empty(),
        "hostnetwork-internal overwrites {clashes:?}"
    );
    let run = parse_agent_args(&internal).expect("internal args");
    assert_eq!(run.config.ingress_class, "ingress-ebpf-internal");

    let privileged = render(&dir.join("hostnetwork-privileged")).expect("rendering");
    let c = agent_container(workload(&privileged).expect("workload")).expect("agent");
    assert_eq!(c["securityContext"]["privileged"], true);
    assert_eq!(c["volumeMounts"][1]["mountPropagation"], "Bidirectional");
}

// ---------------------------------------------------------- broken fixtures

/// `to` relative to `from` (both absolute): kustomize refuses absolute
/// paths in `resources`.
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for c in &to[common..] {
        out.push(c.as_os_str());
    }
    out
}

/// A temporary overlay on `deploy/overlays/hostnetwork` with the given
/// extra kustomization lines; returns the first check that fails on it.
fn broken(extra: &str) -> String {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let root = tmp.path().canonicalize().expect("canonical temp dir");
    let base = deploy::deploy_dir()
        .join("overlays/hostnetwork")
        .canonicalize()
        .expect("canonical overlay");
    let text = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\n{extra}",
        relative(&root, &base).display()
    );
    std::fs::write(root.join("kustomization.yaml"), text).expect("writing the fixture");
    match check_overlay(&root) {
        Ok(s) => panic!("a broken overlay passed every check ({s}):\n{extra}"),
        Err(e) => {
            let e = format!("{e:#}");
            println!("refused, as it should be: {e}");
            e
        }
    }
}

fn json_patch(kind: &str, name: &str, ops: &str) -> String {
    let group = match kind {
        "DaemonSet" => "apps",
        "ClusterRole" | "Role" => "rbac.authorization.k8s.io",
        _ => "",
    };
    let ops: String = ops.lines().map(|l| format!("      {l}\n")).collect();
    format!(
        "patches:\n  - target:\n      group: {group}\n      version: v1\n      kind: {kind}\n      name: {name}\n    patch: |-\n{ops}"
    )
}

#[test]
fn a_misspelled_flag_fails() {
    let e = broken(&json_patch(
        "DaemonSet",
        "ingress-ebpf",
        "- op: add\n  path: /spec/template/spec/containers/0/args/-\n  value: --xdp-mdoe=skb",
    ));
    assert!(e.contains("--xdp-mdoe"), "{e}");
    assert!(e.contains("refused by the CLI"), "{e}");
}

#[test]
fn a_bad_flag_value_in_the_configmap_fails() {
    let e = broken(
        "configMapGenerator:\n  - name: ingress-ebpf-flags\n    behavior: merge\n    literals:\n      - FLAG_XDP_MODE=turbo\n",
    );
    assert!(e.contains("turbo"), "{e}");
}

#[test]
fn an_undefined_variable_in_args_fails() {
    let e = broken(&json_patch(
        "DaemonSet",
        "ingress-ebpf",
        "- op: add\n  path: /spec/template/spec/containers/0/args/-\n  value: --proxy-retries=$(FLAG_PROXY_RETRIES)",
    ));
    assert!(e.contains("$(FLAG_PROXY_RETRIES)"), "{e}");
}

#[test]
fn a_missing_rbac_rule_fails() {
    // The EndpointSlice rule is the last in the ClusterRole.
    let e = broken(&json_patch(
        "ClusterRole",
        "ingress-ebpf",
        "- op: test\n  path: /rules/3/apiGroups/0\n  value: discovery.k8s.io\n- op: remove\n  path: /rules/3",
    ));
    assert!(
        e.contains("missing [get discovery.k8s.io/endpointslices (Cluster)"),
        "{e}"
    );
}

#[test]
fn a_missing_lease_verb_fails() {
    let e = broken(&json_patch(
        "Role",
        "ingress-ebpf-leader",
        "- op: test\n  path: /rules/0/verbs/2\n  value: create\n- op: remove\n  path: /rules/0/verbs/2",
    ));
    assert!(
        e.contains("create coordination.k8s.io/leases (Namespaced)"),
        "{e}"
    );
}

#[test]
fn an_rbac_grant_beyond_the_table_fails() {
    let e = broken(&json_patch(
        "ClusterRole",
        "ingress-ebpf",
        "- op: add\n  path: /rules/-\n  value: {apiGroups: [\"\"], resources: [secrets], verbs: [delete]}",
    ));
    assert!(
        e.contains("not in the table [delete core/secrets (Cluster)]"),
        "{e}"
    );
}

#[test]
fn a_misspelled_field_fails_schema_validation() {
    let e = broken(&json_patch(
        "DaemonSet",
        "ingress-ebpf",
        "- op: add\n  path: /spec/template/spec/hostNetwrok\n  value: true",
    ));
    assert!(e.contains("kubernetes-validate"), "{e}");
    assert!(e.contains("hostNetwrok"), "{e}");
}

#[test]
fn bidirectional_propagation_without_privilege_fails() {
    let e = broken(&json_patch(
        "DaemonSet",
        "ingress-ebpf",
        "- op: replace\n  path: /spec/template/spec/containers/0/volumeMounts/1/mountPropagation\n  value: Bidirectional",
    ));
    assert!(e.contains("Bidirectional"), "{e}");
}

#[test]
fn an_http_listen_off_the_container_port_fails() {
    let e = broken(
        "configMapGenerator:\n  - name: ingress-ebpf-flags\n    behavior: merge\n    literals:\n      - FLAG_HTTP_LISTEN=0.0.0.0:8081\n",
    );
    assert!(e.contains("container port http is 80"), "{e}");
}

#[test]
fn kubelet_expansion_follows_the_rules() {
    let env: BTreeMap<String, String> = [("A".to_string(), "x".to_string())].into();
    assert_eq!(expand("--a=$(A)", &env).expect("defined"), "--a=x");
    assert_eq!(expand("$$(A)", &env).expect("escaped"), "$(A)");
    assert_eq!(expand("cost $5", &env).expect("plain"), "cost $5");
    assert!(expand("$(B)", &env).is_err());
    assert_eq!(
        relative(Path::new("/a/b/c"), Path::new("/a/d")),
        PathBuf::from("../../d")
    );
}

#[test]
fn a_budget_a_daemonset_cannot_use_fails() {
    let e = broken(
        "patches:\n  - target:\n      kind: PodDisruptionBudget\n      name: ingress-ebpf\n    patch: |-\n      - op: remove\n        path: /spec/minAvailable\n      - op: add\n        path: /spec/maxUnavailable\n        value: 1\n",
    );
    assert!(e.contains("absolute minAvailable"), "{e}");
}

// -------------------------------------------------------------- the image

/// The value of `ARG NAME=value` in the Dockerfile.
fn docker_arg<'a>(dockerfile: &'a str, arg: &str) -> Option<&'a str> {
    dockerfile
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ARG "))
        .find_map(|l| l.strip_prefix(arg)?.strip_prefix('='))
}

/// The image builds with the toolchains this machine (and CI) builds with,
/// by the same commands: no Docker engine runs here, so this is what keeps
/// the Dockerfile from drifting.
#[test]
fn the_dockerfile_builds_like_ci() {
    let path = deploy::deploy_dir().join("Dockerfile");
    let dockerfile = std::fs::read_to_string(&path).expect("reading deploy/Dockerfile");
    for step in [
        "cargo xtask setup --build-only",
        "cargo build --release --locked",
    ] {
        assert!(
            dockerfile.contains(step),
            "deploy/Dockerfile lacks `{step}`"
        );
    }
    let version = |toolchain: &str| {
        let out = std::process::Command::new("rustup")
            .args(["run", toolchain, "rustc", "--version"])
            .output()
            .expect("running rustup");
        assert!(out.status.success(), "rustup run {toolchain} failed");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // "rustc 1.95.0 (hash date)": the image's stable is the same release.
    let stable = version("stable");
    let wanted = docker_arg(&dockerfile, "RUST_STABLE").expect("ARG RUST_STABLE");
    assert!(
        stable.starts_with(&format!("rustc {wanted} ")),
        "deploy/Dockerfile builds with Rust {wanted}, CI with {stable}"
    );
    // "rustc 1.97.0-nightly (hash 2026-05-19)": the image's nightly is the
    // same dated build.
    let nightly = version("nightly");
    let wanted = docker_arg(&dockerfile, "RUST_NIGHTLY").expect("ARG RUST_NIGHTLY");
    let date = wanted
        .strip_prefix("nightly-")
        .expect("RUST_NIGHTLY is nightly-DATE");
    assert!(
        nightly.ends_with(&format!(" {date})")),
        "deploy/Dockerfile builds eBPF with {wanted}, CI with {nightly}"
    );
}
