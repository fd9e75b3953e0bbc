//! Priced routes and how a request is matched to one: path (prefix, exact, or an Envoy-style
//! URI template), optional HTTP methods, optional hosts. First match wins.

use x402_protocol::settler_api::PricedMethod;

use crate::route_challenge::RouteChallenge;

/// How a route matches the request path (query string and fragment excluded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// Plain string prefix, as Envoy's route `prefix`.
    Prefix(String),
    /// The whole path. One trailing `/` on the request is tolerated (`/x/` is `/x`), so
    /// a trailing slash cannot be used to reach a paid resource for free.
    Exact(String),
    /// Envoy `uri_template` syntax: literal segments, `*` / `{var}` / `{var=*}` for exactly
    /// one non-empty segment, `**` / `{var=**}` (last only) for the rest of the path.
    /// One trailing `/` on the request is tolerated as for `Exact`.
    Template(Vec<Seg>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Literal(String),
    One,
    Rest,
}

impl PathMatch {
    pub fn template(t: &str) -> Result<PathMatch, String> {
        let body = t
            .strip_prefix('/')
            .ok_or_else(|| "must start with '/'".to_string())?;
        let parts: Vec<&str> = body.split('/').collect();
        let mut segs = Vec::with_capacity(parts.len());
        let mut vars: Vec<&str> = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let seg = if *part == "*" {
                Seg::One
            } else if *part == "**" {
                Seg::Rest
            } else if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                let (name, pattern) = match inner.split_once('=') {
                    Some((n, p)) => (n, Some(p)),
                    None => (inner, None),
                };
                let name_ok = name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !name_ok {
                    return Err(format!(
                        "variable {{{inner}}} needs a name of [A-Za-z][A-Za-z0-9_]*"
                    ));
                }
                if vars.contains(&name) {
                    return Err(format!("variable {name:?} appears twice"));
                }
                vars.push(name);
                match pattern {
                    None | Some("*") => Seg::One,
                    Some("**") => Seg::Rest,
                    Some(p) => {
                        return Err(format!(
                            "variable pattern {p:?} is not supported (only * and **)"
                        ))
                    }
                }
            } else {
                if part.is_empty() && i + 1 != parts.len() {
                    return Err("empty path segment ('//')".to_string());
                }
                if part
                    .bytes()
                    .any(|b| b == b'{' || b == b'}' || b == b'*' || b == b'=')
                {
                    return Err(format!(
                        "segment {part:?} mixes literal text with '{{', '}}', '*' or '='"
                    ));
                }
                Seg::Literal(part.to_string())
            };
            if matches!(seg, Seg::Rest) && i + 1 != parts.len() {
                return Err("'**' is only allowed as the last segment".to_string());
            }
            segs.push(seg);
        }
        // "/a/" is the template "/a" (the trailing slash is tolerated anyway).
        if segs.len() > 1 && segs.last() == Some(&Seg::Literal(String::new())) {
            segs.pop();
        }
        Ok(PathMatch::Template(segs))
    }

    /// `path` is the request path without query string.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Exact(e) => path == e || strip_one_slash(path) == e.as_str(),
            PathMatch::Template(segs) => {
                template_matches(segs, path)
                    || (path.len() > 1
                        && path.ends_with('/')
                        && template_matches(segs, strip_one_slash(path)))
            }
        }
    }
}

fn strip_one_slash(path: &str) -> &str {
    if path.len() > 1 {
        path.strip_suffix('/').unwrap_or(path)
    } else {
        path
    }
}

fn template_matches(segs: &[Seg], path: &str) -> bool {
    let Some(body) = path.strip_prefix('/') else {
        return false;
    };
    let mut parts = body.split('/');
    for seg in segs {
        match seg {
            Seg::Rest => return true,
            Seg::One => match parts.next() {
                Some(p) if !p.is_empty() => {}
                _ => return false,
            },
            Seg::Literal(l) => match parts.next() {
                Some(p) if p == l => {}
                _ => return false,
            },
        }
    }
    parts.next().is_none()
}

/// A host pattern: exact (`api.example.com`) or wildcard (`*.example.com`, one or more labels).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// Stored as the suffix including the dot: `.example.com`.
    Suffix(String),
}

impl HostPattern {
    pub fn parse(h: &str) -> Result<HostPattern, String> {
        let lower = h.to_ascii_lowercase();
        let (wild, rest) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if rest.is_empty() || !rest.split('.').all(label_ok) {
            return Err(format!(
                "{h:?} is not a host name (without port), optionally starting with \"*.\""
            ));
        }
        Ok(if wild {
            HostPattern::Suffix(format!(".{rest}"))
        } else {
            HostPattern::Exact(rest.to_string())
        })
    }

    /// `host` is already lower-case, without port.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(e) => host == e,
            HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }
}

/// `:authority` without port and trailing dot, lower-cased. IPv6 literals keep their brackets.
pub fn normalize_authority(authority: &str) -> String {
    let host = if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => authority,
        }
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// One priced route, compiled from the config.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub matcher: PathMatch,
    pub methods: Option<Vec<String>>,
    pub hosts: Option<Vec<HostPattern>>,
    pub description: String,
    pub mime_type: String,
    /// Accepted methods with the price in each asset's base units.
    pub accepts: Vec<PricedMethod>,
    /// `Some`: the first token of a payment lives this long (the payment is unsettled); the
    /// client renews it at `<token_endpoint>/renew` once the payment has settled.
    pub unsettled_token_ttl_secs: Option<u64>,
    /// `token_endpoint_prefix` + name. Only the config tests read it back: the filter uses
    /// it once, to precompute the route's 402 bodies.
    #[cfg_attr(not(test), allow(dead_code))]
    pub token_endpoint: String,
    /// Precomputed 402 pieces.
    pub challenge: RouteChallenge,
}

/// Lazily read request attributes other than the path, so a request whose path matches no
/// route never has its method or authority fetched from the host.
pub trait RequestAttrs {
    fn method(&mut self) -> Option<&str>;
    fn authority(&mut self) -> Option<&str>;
}

#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> Self {
        RouteTable { routes }
    }
    pub fn len(&self) -> usize {
        self.routes.len()
    }
    pub fn get(&self, i: usize) -> Option<&Route> {
        self.routes.get(i)
    }
    pub fn by_name(&self, name: &str) -> Option<usize> {
        self.routes.iter().position(|r| r.name == name)
    }

    /// Index of the first route matching the request. `path` is `:path` as received (the
    /// query string is ignored).
    pub fn find(&self, path: &str, attrs: &mut dyn RequestAttrs) -> Option<usize> {
        let path = path_only(path);
        let mut host: Option<String> = None;
        for (i, r) in self.routes.iter().enumerate() {
            if !r.matcher.matches(path) {
                continue;
            }
            if let Some(methods) = &r.methods {
                match attrs.method() {
                    Some(m) if methods.iter().any(|x| x == m) => {}
                    _ => continue,
                }
            }
            if let Some(hosts) = &r.hosts {
                if host.is_none() {
                    host = Some(
                        attrs
                            .authority()
                            .map(normalize_authority)
                            .unwrap_or_default(),
                    );
                }
                let h = host.as_deref().unwrap_or("");
                if !hosts.iter().any(|p| p.matches(h)) {
                    continue;
                }
            }
            return Some(i);
        }
        None
    }
}

/// The path without query string or fragment.
pub fn path_only(path: &str) -> &str {
    match path.find(['?', '#']) {
        Some(i) => &path[..i],
        None => path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Attrs {
        method: Option<String>,
        authority: Option<String>,
        fetched: u32,
    }
    impl RequestAttrs for Attrs {
        fn method(&mut self) -> Option<&str> {
            self.fetched += 1;
            self.method.as_deref()
        }
        fn authority(&mut self) -> Option<&str> {
            self.fetched += 1;
            self.authority.as_deref()
        }
    }
    fn attrs(m: &str, a: &str) -> Attrs {
        Attrs {
            method: Some(m.into()),
            authority: Some(a.into()),
            fetched: 0,
        }
    }

    fn t(s: &str) -> PathMatch {
        PathMatch::template(s).unwrap()
    }

    #[test]
    fn prefix_and_exact() {
        let p = PathMatch::Prefix("/api/weather".into());
        assert!(p.matches("/api/weather"));
        assert!(p.matches("/api/weather/today"));
        assert!(p.matches("/api/weatherx"));
        assert!(!p.matches("/api/weathe"));
        assert!(!p.matches("/API/weather"));
        let e = PathMatch::Exact("/x".into());
        assert!(e.matches("/x"));
        assert!(e.matches("/x/"));
        assert!(!e.matches("/x//"));
        assert!(!e.matches("/xy"));
        assert!(PathMatch::Exact("/".into()).matches("/"));
    }

    #[test]
    fn templates() {
        let r = t("/api/users/{id}/report");
        assert!(r.matches("/api/users/42/report"));
        assert!(r.matches("/api/users/42/report/"));
        assert!(!r.matches("/api/users//report"));
        assert!(!r.matches("/api/users/42/report/x"));
        assert!(!r.matches("/api/users/4/2/report"));
        let star = t("/a/*/c");
        assert!(star.matches("/a/b/c"));
        assert!(!star.matches("/a/c"));
        let rest = t("/files/{path=**}");
        assert!(rest.matches("/files/"));
        assert!(rest.matches("/files/a/b/c"));
        assert!(rest.matches("/files"));
        assert!(!rest.matches("/filesx"));
        let rest2 = t("/files/**");
        assert!(rest2.matches("/files/a"));
        assert!(t("/{v=*}").matches("/z"));
        assert!(t("/a/").matches("/a"));
        for bad in [
            "/a/{",
            "/a/{1x}",
            "/a/{x=foo}",
            "/a/**/b",
            "/a/x*",
            "/a//b",
            "a",
            "/{a}/{a}",
        ] {
            assert!(PathMatch::template(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hosts() {
        let e = HostPattern::parse("API.example.com").unwrap();
        assert!(e.matches("api.example.com"));
        assert!(!e.matches("x.api.example.com"));
        let w = HostPattern::parse("*.example.com").unwrap();
        assert!(w.matches("a.example.com"));
        assert!(w.matches("a.b.example.com"));
        assert!(!w.matches("example.com"));
        assert!(!w.matches("aexample.com"));
        for bad in ["*", "", "a..b", "a.com:80", "*.", "a.*.b", "a b"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            normalize_authority("API.Example.com:8080"),
            "api.example.com"
        );
        assert_eq!(normalize_authority("api.example.com."), "api.example.com");
        assert_eq!(normalize_authority("[::1]:443"), "[::1]");
        assert_eq!(normalize_authority("host"), "host");
    }

    #[test]
    fn first_match_wins_and_unmatched_paths_do_not_fetch_headers() {
        let cfg = crate::test_fixtures::sample_config();
        let table = &cfg.routes;
        let mut a = attrs("GET", "x");
        assert_eq!(table.find("/static/logo.png", &mut a), None);
        assert_eq!(a.fetched, 0, "no header fetched for an unpriced path");
        assert_eq!(
            table.find("/api/weather?city=x", &mut attrs("GET", "x")),
            Some(0)
        );
        assert_eq!(
            table.find("/api/weather", &mut attrs("POST", "x")),
            None,
            "method filter"
        );
        assert_eq!(
            table.find(
                "/api/users/1/report",
                &mut attrs("GET", "api.example.com:443")
            ),
            Some(1)
        );
        assert_eq!(
            table.find("/api/users/1/report", &mut attrs("GET", "b.example.org")),
            Some(1)
        );
        assert_eq!(
            table.find("/api/users/1/report", &mut attrs("GET", "evil.com")),
            None
        );
        assert_eq!(
            table.find(
                "/api/users/1/report",
                &mut Attrs {
                    method: None,
                    authority: None,
                    fetched: 0
                }
            ),
            None
        );
        assert_eq!(table.by_name("report"), Some(1));
        assert_eq!(path_only("/a?b#c"), "/a");
        assert_eq!(path_only("/a#c"), "/a");
    }
}
