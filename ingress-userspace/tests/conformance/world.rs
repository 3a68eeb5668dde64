//! The scenario state and the step definitions.

use std::{
    collections::{BTreeMap, BTreeSet},
    convert::Infallible,
    fmt::Display,
};

use anyhow::{Context as _, anyhow, bail, ensure};
use cucumber::{
    codegen::{LocalBoxFuture, Regex},
    gherkin,
    step::{Collection, Context, Step},
};
use serde_json::{Value as Json, json};
use serde_yaml::Value as Yaml;

use super::{
    agent::Agent,
    client::{self, Reply},
    echo::{self, POD_PORT},
};

/// The agent's class, and the controller its IngressClass names.
const CLASS: &str = "ingress-ebpf";
const CONTROLLER: &str = "ingress-ebpf.dev/controller";
/// Bound on waiting for an Ingress to show in the status.
const STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A self-signed certificate made for one host, stored as a TLS Secret.
#[derive(Debug)]
struct TlsSecret {
    name: String,
    cert_pem: String,
    key_pem: String,
}

/// One scenario's cluster: what the steps declared, the pods, the agent and
/// the last responses.
#[derive(Debug, Default)]
pub struct IngressWorld {
    namespace: Option<String>,
    /// The Ingress, namespace set.
    ingress: Option<Yaml>,
    /// TLS Secrets the scenario asked for.
    secrets: Vec<TlsSecret>,
    /// Replicas asked for by "scaled to N" (others have one).
    replicas: BTreeMap<String, usize>,
    pods: BTreeMap<String, Vec<echo::Pod>>,
    agent: Option<Agent>,
    replies: Vec<Reply>,
}

impl cucumber::World for IngressWorld {
    type Error = Infallible;

    async fn new() -> Result<Self, Infallible> {
        Ok(Self::default())
    }
}

impl IngressWorld {
    /// Stops the agent and the pods.
    pub fn teardown(&mut self) {
        self.agent = None;
        self.pods.clear();
    }

    fn namespace(&mut self) -> String {
        self.namespace
            .get_or_insert_with(|| format!("conformance-{:08x}", fastrand::u32(..)))
            .clone()
    }

    fn ingress(&self) -> anyhow::Result<&Yaml> {
        self.ingress
            .as_ref()
            .ok_or_else(|| anyhow!("no Ingress resource was given before this step"))
    }

    fn ingress_name(&self) -> anyhow::Result<String> {
        self.ingress()?["metadata"]["name"]
            .as_str()
            .map(str::to_string)
            .context("the Ingress has no metadata.name")
    }

    fn agent(&self) -> anyhow::Result<&Agent> {
        self.agent.as_ref().ok_or_else(|| {
            anyhow!("the Ingress was never deployed (no \"The Ingress status ...\" step ran)")
        })
    }

    fn last(&self) -> anyhow::Result<&Reply> {
        self.replies
            .last()
            .ok_or_else(|| anyhow!("no request was sent before this step"))
    }

    /// The Services the Ingress names, and any that was scaled.
    fn services(&self) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = self.replicas.keys().cloned().collect();
        if let Some(ing) = &self.ingress {
            let spec = &ing["spec"];
            let mut add = |backend: &Yaml| {
                if let Some(n) = backend["service"]["name"].as_str() {
                    names.insert(n.to_string());
                }
            };
            add(&spec["defaultBackend"]);
            for rule in spec["rules"].as_sequence().into_iter().flatten() {
                for path in rule["http"]["paths"].as_sequence().into_iter().flatten() {
                    add(&path["backend"]);
                }
            }
        }
        names
    }

    /// Starts or stops echo pods until every Service has its replicas.
    async fn sync_pods(&mut self) -> anyhow::Result<()> {
        let ns = self.namespace();
        for svc in self.services() {
            let want = self.replicas.get(&svc).copied().unwrap_or(1);
            let pods = self.pods.entry(svc.clone()).or_default();
            pods.truncate(want);
            while pods.len() < want {
                pods.push(echo::start(&ns, &svc, pods.len()).await?);
            }
        }
        Ok(())
    }

    /// Every object of the scenario as one multi-document YAML.
    fn render(&mut self) -> anyhow::Result<String> {
        let ns = self.namespace();
        let mut docs: Vec<String> = Vec::new();
        let mut push = |doc: &dyn document::Document| -> anyhow::Result<()> {
            docs.push(doc.to_yaml()?);
            Ok(())
        };
        push(&json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "IngressClass",
            "metadata": {
                "name": CLASS,
                "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"},
            },
            "spec": {"controller": CONTROLLER},
        }))?;
        push(self.ingress()?)?;
        for svc in self.services() {
            push(&json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": svc, "namespace": ns},
                "spec": {
                    "ports": [{"name": "http", "port": POD_PORT, "targetPort": POD_PORT, "protocol": "TCP"}],
                },
            }))?;
            let endpoints: Vec<Json> = self
                .pods
                .get(&svc)
                .into_iter()
                .flatten()
                .map(|p| json!({"addresses": [p.ip.to_string()], "conditions": {"ready": true}}))
                .collect();
            push(&json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": format!("{svc}-conformance"),
                    "namespace": ns,
                    "labels": {"kubernetes.io/service-name": svc},
                },
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": POD_PORT, "protocol": "TCP"}],
                "endpoints": endpoints,
            }))?;
        }
        for secret in &self.secrets {
            push(&json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "kubernetes.io/tls",
                "metadata": {"name": secret.name, "namespace": ns},
                "stringData": {"tls.crt": secret.cert_pem, "tls.key": secret.key_pem},
            }))?;
        }
        Ok(docs.join("---\n"))
    }

    /// Writes the manifests: starts the agent on them, or has the running
    /// agent reload them, and returns once they are applied.
    async fn deploy(&mut self) -> anyhow::Result<()> {
        self.sync_pods().await?;
        let manifest = self.render()?;
        match &self.agent {
            Some(agent) => agent.apply(&manifest).await,
            None => {
                self.agent = Some(Agent::start(&manifest).await?);
                Ok(())
            }
        }
    }

    /// Our Ingress's entry in /status/ingresses, if listed.
    async fn status_entry(&self) -> anyhow::Result<(Option<Json>, Json)> {
        let ns = self.namespace.clone().unwrap_or_default();
        let name = self.ingress_name()?;
        let status = self.agent()?.status().await?;
        let entry = status["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["namespace"] == ns.as_str() && i["name"] == name.as_str())
            .cloned();
        Ok((entry, status))
    }

    /// Sends one request; `host` empty means the listener's own address.
    async fn request(&self, method: &str, host: &str, path: &str) -> anyhow::Result<Reply> {
        let agent = self.agent()?;
        let host = if host.is_empty() {
            agent.http.to_string()
        } else {
            host.to_string()
        };
        client::send(agent.http, method, &host, path).await
    }

    /// Sends one request over TLS to the HTTPS listener, trusting the
    /// scenario's self-signed certificates only.
    async fn request_tls(&self, method: &str, host: &str, path: &str) -> anyhow::Result<Reply> {
        let agent = self.agent()?;
        ensure!(
            !self.secrets.is_empty(),
            "an https:// request needs a TLS secret given before it"
        );
        let trusted: String = self.secrets.iter().map(|s| s.cert_pem.as_str()).collect();
        client::send_tls(agent.https, method, host, path, &trusted).await
    }
}

/// YAML text of JSON- or YAML-valued documents alike.
mod document {
    pub trait Document {
        fn to_yaml(&self) -> anyhow::Result<String>;
    }
    impl<T: serde::Serialize> Document for T {
        fn to_yaml(&self) -> anyhow::Result<String> {
            Ok(serde_yaml::to_string(self)?)
        }
    }
}

// ---- steps ---------------------------------------------------------------

/// The regex groups of a step (without the whole match).
fn groups(ctx: &Context) -> Vec<String> {
    ctx.matches.iter().skip(1).map(|(_, v)| v.clone()).collect()
}

fn docstring(ctx: &Context) -> anyhow::Result<Yaml> {
    let text = ctx
        .step
        .docstring
        .as_deref()
        .context("this step needs a docstring")?;
    serde_yaml::from_str(text).context("the docstring is not YAML")
}

fn table(ctx: &Context) -> anyhow::Result<Vec<(String, String)>> {
    let t: &gherkin::Table = ctx.step.table.as_ref().context("this step needs a table")?;
    Ok(t.rows
        .iter()
        .skip(1)
        .filter_map(|r| match r.as_slice() {
            [k, v, ..] => Some((k.clone(), v.clone())),
            _ => None,
        })
        .collect())
}

fn expect_eq(what: &str, want: impl Display, got: impl Display) -> anyhow::Result<()> {
    let (want, got) = (want.to_string(), got.to_string());
    ensure!(want == got, "{what}: expected {want:?}, got {got:?}");
    Ok(())
}

async fn new_namespace(w: &mut IngressWorld, _: Context) -> anyhow::Result<()> {
    w.namespace = None;
    w.namespace();
    Ok(())
}

async fn ingress_with_spec(w: &mut IngressWorld, ctx: Context) -> anyhow::Result<()> {
    let name = groups(&ctx)[0].clone();
    let spec = docstring(&ctx)?;
    let ns = w.namespace();
    let mut ingress = serde_yaml::to_value(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "namespace": ns},
    }))?;
    ingress["spec"] = spec;
    w.ingress = Some(ingress);
    Ok(())
}

async fn ingress_resource(w: &mut IngressWorld, ctx: Context) -> anyhow::Result<()> {
    let mut ingress = docstring(&ctx)?;
    let ns = w.namespace();
    let meta = ingress
        .get_mut("metadata")
        .and_then(Yaml::as_mapping_mut)
        .context("the Ingress has no metadata")?;
    meta.insert("namespace".into(), ns.into());
    w.ingress = Some(ingress);
    Ok(())
}

async fn ingress_in_new_namespace(w: &mut IngressWorld, ctx: Context) -> anyhow::Result<()> {
    w.namespace = None;
    ingress_resource(w, ctx).await
}

async fn tls_secret(w: &mut IngressWorld, ctx: Context) -> anyhow::Result<()> {
    let g = groups(&ctx);
    let made = rcgen::generate_simple_self_signed(vec![g[1].clone()])
        .context("making the self-signed certificate")?;
    w.secrets.push(TlsSecret {
        name: g[0].clone(),
        cert_pem: made.cert.pem(),
        key_pem: made.signing_key.serialize_pem(),
    });
    Ok(())
}

async fn status_shows_address(w: &mut IngressWorld, _: Context) -> anyhow::Result<()> {
    w.deploy().await?;
    let deadline = std::time::Instant::now() + STATUS_TIMEOUT;
    loop {
        let (entry, status) = w.status_entry().await?;
        let address = entry.as_ref().and_then(|e| {
            e["loadBalancer"]["ingress"]
                .as_array()?
                .iter()
                .find_map(|a| {
                    a["ip"]
                        .as_str()
                        .or(a["hostname"].as_str())
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                })
        });
        if address.is_some() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "Ingress {}/{} shows no address within {STATUS_TIMEOUT:?}; /status/ingresses is {status}; agent log:\n{}",
                w.namespace.as_deref().unwrap_or(""),
                w.ingress_name()?,
                w.agent()?.log_tail(15)
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn status_without_address(w: &mut IngressWorld, _: Context) -> anyhow::Result<()> {
    w.deploy().await?;
    let (entry, _) = w.status_entry().await?;
    if let Some(entry) = entry {
        bail!("the Ingress is served and shows in the status: {entry}");
    }
    Ok(())
}

async fn scaled_to(w: &mut IngressWorld, ctx: Context) -> anyhow::Result<()> {
    let g = groups(&ctx);
    let n: usize = g[1].parse().context("replica count")?;
    w.replicas.insert(g[0].clone(), n);
    if w.agent.is_some() {
        w.deploy().await?;
    } else {
        w.sync_pods().await?;
    }
    Ok(())
}

/// `http://host/path` -> (host, path).
fn split_url(url: &str) -> anyhow::Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .with_context(|| format!("{url:?} is not an http:// or https:// URL"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Ok((host.to_string(), path.to_string()))
}

async fn send_url(w: &mut IngressWorld, ctx: Context) -> anyhow::Result<()> {
    let g = groups(&ctx);
    let (host, path) = split_url(&g[1])?;
    let reply = if g[1].starts_with("https://") {
        w.request_tls(&g[0], &host, &path).await?
    } else {
        w.request(&g[0], &host, &path).await?
    };
    w.replies = vec![reply];
    Ok(())
}

async fn send_host_path(w: &mut IngressWorld, ctx: Context) -> anyhow::Result<()> {
    let g = groups(&ctx);
    let path = format!("/{}", g[2].trim_start_matches('/'));
    let reply = w.request(&g[0], &g[1], &path).await?;
    w.replies = vec![reply];
    Ok(())
}

async fn send_many(w: &mut IngressWorld, ctx: Context) -> anyhow::Result<()> {
    let g = groups(&ctx);
    let n: usize = g[0].parse().context("request count")?;
    ensure!(n <= 10_000, "{n} requests is more than this runner sends");
    let (host, path) = split_url(&g[1])?;
    let mut replies = Vec::with_capacity(n);
    for _ in 0..n {
        replies.push(w.request("GET", &host, &path).await?);
    }
    w.replies = replies;
    Ok(())
}

async fn verified_hostname(w: &mut IngressWorld, ctx: Context) -> anyhow::Result<()> {
    let want = &groups(&ctx)[0];
    match &w.last()?.verified_host {
        Some(host) => expect_eq("certificate verified for", want, host),
        None => bail!("the last request did not go over TLS"),
    }
}

async fn status_code(w: &mut IngressWorld, ctx: Context) -> anyhow::Result<()> {
    let want = &groups(&ctx)[0];
    let r = w.last()?;
    ensure!(
        r.status.to_string() == *want,
        "status code: expected {want}, got {} (body: {:?})",
        r.status,
        r.text()
    );
    Ok(())
}

async fn served_by(w: &mut IngressWorld, ctx: Context) -> anyhow::Result<()> {
    let want = &groups(&ctx)[0];
    let body = w.last()?.json()?;
    expect_eq(
        "serving service",
        want,
        body["service"].as_str().unwrap_or(""),
    )?;
    expect_eq(
        "serving namespace",
        w.namespace.as_deref().unwrap_or(""),
        body["namespace"].as_str().unwrap_or(""),
    )
}

async fn response_proto(w: &mut IngressWorld, ctx: Context) -> anyhow::Result<()> {
    expect_eq("response proto", &groups(&ctx)[0], &w.last()?.proto)
}

async fn response_headers(w: &mut IngressWorld, ctx: Context) -> anyhow::Result<()> {
    let r = w.last()?;
    for (key, value) in table(&ctx)? {
        let got: Vec<String> = r
            .headers
            .get_all(key.as_str())
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        ensure!(!got.is_empty(), "the response has no {key} header");
        ensure!(
            value == "*" || got.contains(&value),
            "response header {key}: expected {value:?}, got {got:?}"
        );
    }
    Ok(())
}

async fn request_field(w: &mut IngressWorld, field: &str, want: &str) -> anyhow::Result<()> {
    let body = w.last()?.json()?;
    expect_eq(
        &format!("request {field}"),
        want,
        body[field].as_str().unwrap_or(""),
    )
}

async fn request_method(w: &mut IngressWorld, ctx: Context) -> anyhow::Result<()> {
    request_field(w, "method", &groups(&ctx)[0]).await
}

async fn request_path(w: &mut IngressWorld, ctx: Context) -> anyhow::Result<()> {
    // The outline writes paths without their leading slash.
    let want = format!("/{}", groups(&ctx)[0].trim_start_matches('/'));
    request_field(w, "path", &want).await
}

async fn request_proto(w: &mut IngressWorld, ctx: Context) -> anyhow::Result<()> {
    request_field(w, "proto", &groups(&ctx)[0]).await
}

async fn request_host(w: &mut IngressWorld, ctx: Context) -> anyhow::Result<()> {
    request_field(w, "host", &groups(&ctx)[0]).await
}

async fn request_headers(w: &mut IngressWorld, ctx: Context) -> anyhow::Result<()> {
    let body = w.last()?.json()?;
    let headers = body["headers"]
        .as_object()
        .context("the echo body has no headers")?;
    for (key, value) in table(&ctx)? {
        let got: Vec<String> = headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(&key))
            .flat_map(|(_, v)| v.as_array().cloned().unwrap_or_default())
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        ensure!(
            !got.is_empty(),
            "the request reached the pod without a {key} header"
        );
        ensure!(
            value == "*" || got.contains(&value),
            "request header {key}: expected {value:?}, got {got:?}"
        );
    }
    Ok(())
}

async fn all_ok_from_pods(w: &mut IngressWorld, ctx: Context) -> anyhow::Result<()> {
    let want: usize = groups(&ctx)[0].parse().context("pod count")?;
    ensure!(
        !w.replies.is_empty(),
        "no request was sent before this step"
    );
    let bad: Vec<u16> = w
        .replies
        .iter()
        .map(|r| r.status)
        .filter(|s| *s != 200)
        .collect();
    ensure!(
        bad.is_empty(),
        "{} of {} responses were not 200: {:?}",
        bad.len(),
        w.replies.len(),
        &bad[..bad.len().min(10)]
    );
    let mut ips = BTreeSet::new();
    for r in &w.replies {
        let ip = r.json()?["podIP"].as_str().unwrap_or("").to_string();
        ensure!(!ip.is_empty(), "a response has no podIP: {:?}", r.text());
        ips.insert(ip);
    }
    ensure!(
        ips.len() == want,
        "the responses came from {} different pods, expected {want}: {ips:?}",
        ips.len()
    );
    Ok(())
}

// ---- registration ----------------------------------------------------------

/// Turns `async fn(&mut IngressWorld, Context) -> anyhow::Result<()>` into
/// cucumber's step type; an error fails the step with its message.
macro_rules! step {
    ($f:ident) => {{
        fn wrapped(w: &mut IngressWorld, ctx: Context) -> LocalBoxFuture<'_, ()> {
            Box::pin(async move {
                if let Err(e) = $f(w, ctx).await {
                    panic!("{e:#}");
                }
            })
        }
        wrapped as Step<IngressWorld>
    }};
}

/// Every step, usable after any keyword (the suite mixes them: `Then The
/// Ingress status ...` in a Background, `And the response ...` after a When).
pub fn steps() -> Collection<IngressWorld> {
    let defs: Vec<(&str, Step<IngressWorld>)> = vec![
        (r"^a new random namespace$", step!(new_namespace)),
        (
            r#"^an Ingress resource named "([^"]+)" with this spec:?$"#,
            step!(ingress_with_spec),
        ),
        (r"^an Ingress resource:?$", step!(ingress_resource)),
        (
            r"^an Ingress resource in a new random namespace:?$",
            step!(ingress_in_new_namespace),
        ),
        (
            r#"^a self-signed TLS secret named "([^"]+)" for the "([^"]+)" hostname$"#,
            step!(tls_secret),
        ),
        (
            r"^The Ingress status shows the IP address or FQDN where it is exposed$",
            step!(status_shows_address),
        ),
        (
            r"^The Ingress status should not contain the IP address or FQDN$",
            step!(status_without_address),
        ),
        (
            r#"^The backend deployment "([^"]+)" for the ingress resource is scaled to (\d+)$"#,
            step!(scaled_to),
        ),
        (
            r#"^I send a "([A-Z]+)" request to "(https?://[^"]*)"$"#,
            step!(send_url),
        ),
        (
            r#"^the secure connection must verify the "([^"]+)" hostname$"#,
            step!(verified_hostname),
        ),
        (
            r#"^I send a "([A-Z]+)" request to http://"([^"]*)"/"([^"]*)"$"#,
            step!(send_host_path),
        ),
        (
            r#"^I send (\d+) requests to "(http://[^"]*)"$"#,
            step!(send_many),
        ),
        (
            r"^the response status-code must be (\d+)$",
            step!(status_code),
        ),
        (
            r#"^the response must be served by the "([^"]+)" service$"#,
            step!(served_by),
        ),
        (
            r#"^the response proto must be "([^"]+)"$"#,
            step!(response_proto),
        ),
        (
            r"^the response headers must contain <key> with matching <value>$",
            step!(response_headers),
        ),
        (
            r#"^the request method must be "([^"]*)"$"#,
            step!(request_method),
        ),
        (
            r#"^the request path must be "([^"]*)"$"#,
            step!(request_path),
        ),
        (
            r#"^the request proto must be "([^"]*)"$"#,
            step!(request_proto),
        ),
        (
            r"^the request headers must contain <key> with matching <value>$",
            step!(request_headers),
        ),
        (
            r#"^the request host must be "([^"]*)"$"#,
            step!(request_host),
        ),
        (
            r"^all the responses status-code must be 200 and the response body should contain the IP address of (\d+) different Kubernetes pods$",
            step!(all_ok_from_pods),
        ),
    ];
    defs.into_iter().fold(Collection::new(), |c, (re, f)| {
        let re = Regex::new(re).expect("step regex");
        c.given(None, re.clone(), f)
            .when(None, re.clone(), f)
            .then(None, re, f)
    })
}
