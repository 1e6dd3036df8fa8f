//! Names and hostnames: revision names from generations, shortening of long names, and route
//! and tag hosts from config-network's templates.

use std::collections::BTreeMap;

use md5::{Digest, Md5};

use crate::config::{DomainConfig, NetworkConfig, domain::CLUSTER_LOCAL_DOMAIN};

/// Kubernetes' limit for label values and DNS labels, which names of Revisions, Services and
/// Deployments must fit in.
pub const MAX_NAME_LEN: usize = 63;

/// `{parent}{suffix}`, shortened to 63 characters when needed by replacing the end of `parent`
/// with the MD5 of `parent` (as Knative's `kmeta.ChildName` does, so long names come out the
/// same as on Knative).
pub fn child_name(parent: &str, suffix: &str) -> String {
    if parent.len() + suffix.len() <= MAX_NAME_LEN {
        return format!("{parent}{suffix}");
    }
    const HASH_LEN: usize = 32;
    let Some(head_len) = MAX_NAME_LEN.checked_sub(suffix.len() + HASH_LEN) else {
        return hex(&Md5::digest(format!("{parent}{suffix}").as_bytes()));
    };
    let hash = hex(&Md5::digest(parent.as_bytes()));
    let head = parent.get(..head_len).unwrap_or(parent);
    format!("{head}{hash}{suffix}")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The Revision a Configuration stamps at `generation`: `hello-00003`.
pub fn revision_name(configuration: &str, generation: i64) -> String {
    child_name(configuration, &format!("-{generation:05}"))
}

/// The Kubernetes Deployment of a Revision (Knative's name).
pub fn deployment_name(revision: &str) -> String {
    child_name(revision, "-deployment")
}

/// Values a host template may use.
#[derive(Debug, Clone, Copy)]
pub struct TemplateValues<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub domain: &'a str,
    pub tag: &'a str,
    pub annotations: &'a BTreeMap<String, String>,
}

/// Render the subset of Go templates Knative's host templates use: `{{.Name}}`,
/// `{{.Namespace}}`, `{{.Domain}}`, `{{.Tag}}` and `{{index .Annotations "key"}}`.
pub fn render_host_template(template: &str, v: &TemplateValues<'_>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("unclosed action in template {template:?}"))?;
        let action = after[..end].trim();
        match action {
            ".Name" => out.push_str(v.name),
            ".Namespace" => out.push_str(v.namespace),
            ".Domain" => out.push_str(v.domain),
            ".Tag" => out.push_str(v.tag),
            _ => {
                let key = action
                    .strip_prefix("index .Annotations")
                    .map(str::trim)
                    .and_then(|k| k.strip_prefix('"').and_then(|k| k.strip_suffix('"')))
                    .ok_or_else(|| {
                        format!("unsupported template action {{{{{action}}}}} (use .Name, .Namespace, .Domain, .Tag or index .Annotations \"key\")")
                    })?;
                out.push_str(v.annotations.get(key).map_or("", String::as_str));
            }
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Hosts of one Route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteHosts {
    /// The host in `status.url`.
    pub host: String,
    /// Always reachable in-cluster: `{name}.{namespace}.svc.cluster.local`.
    pub cluster_local_host: String,
    /// The domain chosen for this route.
    pub domain: String,
    /// Whether the route is only reachable in-cluster.
    pub cluster_local: bool,
}

/// The inputs that decide a route's hosts.
#[derive(Debug, Clone, Copy)]
pub struct RouteRef<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub annotations: &'a BTreeMap<String, String>,
}

pub fn route_hosts(
    r: &RouteRef<'_>,
    network: &NetworkConfig,
    domains: &DomainConfig,
) -> Result<RouteHosts, String> {
    let domain = domains.domain_for(r.labels).to_string();
    let cluster_local = domain == CLUSTER_LOCAL_DOMAIN;
    let cluster_local_host = format!("{}.{}.{CLUSTER_LOCAL_DOMAIN}", r.name, r.namespace);
    let host = if cluster_local {
        cluster_local_host.clone()
    } else {
        render_host_template(
            &network.domain_template,
            &TemplateValues {
                name: r.name,
                namespace: r.namespace,
                domain: &domain,
                tag: "",
                annotations: r.annotations,
            },
        )?
    };
    check_dns_subdomain(&host).map_err(|e| format!("host {host:?} from domain-template: {e}"))?;
    Ok(RouteHosts {
        host,
        cluster_local_host,
        domain,
        cluster_local,
    })
}

/// The host of a tag: the tag template gives the name part, then the domain template as usual.
pub fn tag_host(
    r: &RouteRef<'_>,
    tag: &str,
    network: &NetworkConfig,
    domains: &DomainConfig,
) -> Result<String, String> {
    let name = tag_name(r.name, tag, network)?;
    let tagged = RouteRef { name: &name, ..*r };
    route_hosts(&tagged, network, domains).map(|h| h.host)
}

/// `{tag}-{name}` (per tag-template): the name part of a tag's host.
pub fn tag_name(route: &str, tag: &str, network: &NetworkConfig) -> Result<String, String> {
    let empty = BTreeMap::new();
    render_host_template(
        &network.tag_template,
        &TemplateValues {
            name: route,
            namespace: "",
            domain: "",
            tag,
            annotations: &empty,
        },
    )
}

/// `scheme://host`.
pub fn url(scheme: &str, host: &str) -> String {
    format!("{scheme}://{host}")
}

/// RFC 1123 label: lower-case alphanumerics and '-', starting and ending alphanumeric, ≤ 63.
pub fn check_dns_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > MAX_NAME_LEN {
        return Err(format!(
            "must be at most {MAX_NAME_LEN} characters (is {})",
            s.len()
        ));
    }
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !s.chars().all(ok_char) || !edge(s.chars().next()) || !edge(s.chars().last()) {
        return Err("must consist of lower case letters, digits and '-', and start and end with a letter or digit".into());
    }
    Ok(())
}

/// RFC 1035 label: as an RFC 1123 label, but starting with a letter (Kubernetes Service names).
pub fn check_dns_1035_label(s: &str) -> Result<(), String> {
    check_dns_label(s)?;
    if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err("must start with a lower case letter".into());
    }
    Ok(())
}

/// RFC 1123 subdomain: dot-separated labels, ≤ 253 characters.
pub fn check_dns_subdomain(s: &str) -> Result<(), String> {
    if s.len() > 253 {
        return Err(format!("must be at most 253 characters (is {})", s.len()));
    }
    for label in s.split('.') {
        check_dns_label(label).map_err(|e| format!("label {label:?} {e}"))?;
    }
    Ok(())
}

/// An image reference as registries parse it: `[host[:port]/]path[:tag][@algorithm:hex]`, the
/// path's components lower case alphanumerics joined by `.`, `_`, `__` or `-`.
pub fn check_image_reference(image: &str) -> Result<(), String> {
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (image, None),
    };
    if let Some(d) = digest {
        let ok = d.split_once(':').is_some_and(|(algo, hex)| {
            !algo.is_empty()
                && algo
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+._-".contains(c))
                && hex.len() >= 32
                && hex.chars().all(|c| c.is_ascii_hexdigit())
        });
        if !ok {
            return Err(format!("digest {d:?} is not algorithm:hex"));
        }
    }
    // A tag follows the last ':' after the last '/'.
    let (name, tag) = match rest.rfind(':') {
        Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && t.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !ok {
            return Err(format!(
                "tag {t:?} must be up to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"
            ));
        }
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    // The first component is a registry host when it has a '.' or ':' or is localhost.
    if parts.len() > 1 {
        let host = parts[0];
        if host.contains('.') || host.contains(':') || host == "localhost" {
            let ok = host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c));
            if !ok || host.starts_with(['.', '-', ':']) {
                return Err(format!("registry {host:?} is not a host[:port]"));
            }
            parts.remove(0);
        }
    }
    let component = |p: &str| {
        let bytes: Vec<char> = p.chars().collect();
        !p.is_empty()
            && bytes
                .first()
                .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            && bytes
                .last()
                .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
            && !p.contains("..")
            && !p.contains("___")
    };
    if parts.is_empty() || !parts.iter().all(|p| component(p)) {
        return Err(format!(
            "repository {name:?} must be lower case letters, digits and separators ('.', '_', '__', '-') in '/'-separated components"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        for ok in [
            "hello",
            "ghcr.io/ebb/hello",
            "ghcr.io/ebb/hello:v1.2_x",
            "127.0.0.1:5000/a/b:c",
            "localhost/ebb-e2e/hello:123",
            "gcr.io/knative-samples/helloworld-go",
            "repo@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "a/b:t@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "registry.example.com/org/app__x",
        ] {
            assert_eq!(check_image_reference(ok), Ok(()), "{ok}");
        }
        for bad in [
            "Hello",
            "ghcr.io/Ebb/hello",
            "hello:",
            "hello:-x",
            "a b",
            "repo@sha256:xyz",
            "repo@nodigest",
            "/hello",
            "hello/",
            "a//b",
        ] {
            assert!(check_image_reference(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn revision_names_follow_generation() {
        assert_eq!(revision_name("hello", 1), "hello-00001");
        assert_eq!(revision_name("hello", 3), "hello-00003");
        assert_eq!(revision_name("hello", 123456), "hello-123456");
    }

    #[test]
    fn long_names_are_shortened_with_a_hash() {
        let parent = "a".repeat(60);
        let name = revision_name(&parent, 1);
        assert_eq!(name.len(), 63);
        assert!(name.ends_with("-00001"), "{name}");
        assert!(check_dns_label(&name).is_ok(), "{name}");
        // Deterministic and distinct for distinct parents.
        assert_eq!(name, revision_name(&parent, 1));
        assert_ne!(name, revision_name(&"b".repeat(60), 1));
        // A name that fits is untouched.
        let fits = "a".repeat(57);
        assert_eq!(revision_name(&fits, 1), format!("{fits}-00001"));
        assert_eq!(deployment_name("hello-00001"), "hello-00001-deployment");
    }

    #[test]
    fn hosts_from_templates() {
        let labels = BTreeMap::new();
        let annotations = BTreeMap::from([("team".to_string(), "blue".to_string())]);
        let r = RouteRef {
            name: "hello",
            namespace: "default",
            labels: &labels,
            annotations: &annotations,
        };
        let domains = DomainConfig::single("example.com");
        let network = NetworkConfig::default();
        let hosts = route_hosts(&r, &network, &domains).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(hosts.host, "hello.default.example.com");
        assert_eq!(hosts.cluster_local_host, "hello.default.svc.cluster.local");
        assert_eq!(
            tag_host(&r, "v1", &network, &domains),
            Ok("v1-hello.default.example.com".into())
        );

        let custom = NetworkConfig {
            domain_template: "{{.Name}}-{{index .Annotations \"team\"}}.{{.Domain}}".into(),
            ..NetworkConfig::default()
        };
        assert_eq!(
            route_hosts(&r, &custom, &domains).map(|h| h.host),
            Ok("hello-blue.example.com".into())
        );

        let local = BTreeMap::from([(
            crate::labels::VISIBILITY.to_string(),
            "cluster-local".to_string(),
        )]);
        let r = RouteRef {
            labels: &local,
            ..r
        };
        let hosts = route_hosts(&r, &network, &domains).unwrap_or_else(|e| panic!("{e}"));
        assert!(hosts.cluster_local);
        assert_eq!(hosts.host, "hello.default.svc.cluster.local");
    }

    #[test]
    fn dns_checks() {
        assert!(check_dns_label("a-1").is_ok());
        assert!(check_dns_label("-a").is_err());
        assert!(check_dns_label("A").is_err());
        assert!(check_dns_label(&"a".repeat(64)).is_err());
        assert!(check_dns_1035_label("1a").is_err());
        assert!(check_dns_1035_label("a1").is_ok());
        assert!(check_dns_subdomain("a.b-c.d").is_ok());
        assert!(check_dns_subdomain("a..b").is_err());
    }
}
