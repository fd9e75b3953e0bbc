//! Priced routes and how a request is matched to one: by the name of the route Envoy chose
//! for it (`envoy_route`, the `xds.route_name` property), or by the filter's own matching on
//! path (prefix, exact, or an Envoy-style URI template) and optional hosts; both with
//! optional HTTP methods. Envoy route names are looked up first (a hash map), then the path
//! routes in order; first match wins.

use std::collections::HashMap;

use x402_protocol::settler_api::PricedMethod;

use crate::policy::{CacheControl, FailureMode};
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

    /// Can one host match both patterns?
    fn overlaps(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (HostPattern::Exact(a), HostPattern::Exact(b)) => a == b,
            (HostPattern::Exact(a), p @ HostPattern::Suffix(_))
            | (p @ HostPattern::Suffix(_), HostPattern::Exact(a)) => p.matches(a),
            (HostPattern::Suffix(a), HostPattern::Suffix(b)) => {
                a.ends_with(b.as_str()) || b.ends_with(a.as_str())
            }
        }
    }
}

fn label_ok(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `:authority` as the routes compare it: lower-cased, without a numeric port and without one
/// trailing dot; IPv6 literals keep their brackets. `None` when it does not parse: empty, a
/// port that is not 1..=5 digits up to 65535 (`api.example.com:abc`, `host:`), an empty label,
/// or a character outside `[A-Za-z0-9._-]` (IPv6: hex digits, `:` and `.`).
pub fn parse_authority(authority: &str) -> Option<String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if inside.is_empty()
            || !inside
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return None;
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (format!("[{}]", inside.to_ascii_lowercase()), port)
    } else {
        let (h, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        let h = h.strip_suffix('.').unwrap_or(h);
        if h.is_empty() || h.len() > 253 || !h.split('.').all(label_ok) {
            return None;
        }
        (h.to_ascii_lowercase(), port)
    };
    if let Some(p) = port {
        let numeric = !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
        if !numeric || p.parse::<u32>().is_ok_and(|n| n > 65_535) {
            return None;
        }
    }
    Some(host)
}

/// What a priced route does with a method it does not list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtherMethods {
    /// 405 with `Allow` (the default): an unlisted method never reaches the upstream unpaid.
    Refuse,
    /// The route does not apply: later routes are tried, and with none the request passes
    /// unpriced.
    Pass,
}

/// How a route picks its requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// The filter's own matching on the request path (`routes[].match`).
    Path(PathMatch),
    /// The request Envoy routed through the route of this name (`routes[].envoy_route`,
    /// Envoy's `route.name`): Envoy's routing decides, the filter compares one string.
    EnvoyRoute(String),
}

/// One priced route, compiled from the config.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub selector: Selector,
    /// Match the path ASCII case-insensitively (for upstreams that do: Express, ASP.NET).
    pub case_insensitive: bool,
    pub methods: Option<Vec<String>>,
    pub other_methods: OtherMethods,
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
    /// `routes[].failure_mode`, or `settler.failure_mode` when the route says nothing.
    pub failure_mode: FailureMode,
    /// `routes[].cache_control` (default `private, no-store` on paid responses).
    pub cache_control: CacheControl,
    /// `routes[].forward_token`: keep the client's `Authorization: Bearer <our token>` on
    /// the way to the upstream (default: removed).
    pub forward_token: bool,
    /// `routes[].charge_on_upstream_error` (default `false`): an x402 v2 payment is held
    /// until the upstream answers and voided (never charged) when it answers 400 or more.
    pub charge_on_upstream_error: bool,
    /// `routes[].settlement` (default `async`).
    pub settlement: crate::policy::Settlement,
}

impl Route {
    /// The route's path pattern; `None` for a route selected by Envoy route name.
    pub fn path_match(&self) -> Option<&PathMatch> {
        match &self.selector {
            Selector::Path(m) => Some(m),
            Selector::EnvoyRoute(_) => None,
        }
    }

    fn path_matches(&self, path: &str, lower: &mut Option<String>) -> bool {
        let Some(matcher) = self.path_match() else {
            return false;
        };
        if self.case_insensitive {
            // The config keeps a case-insensitive route's pattern lower-cased.
            let l = lower.get_or_insert_with(|| path.to_ascii_lowercase());
            matcher.matches(l)
        } else {
            matcher.matches(path)
        }
    }

    /// Does the route price the request's method? When it does not and refuses other
    /// methods, its methods are added to `allow` (the 405's `Allow`).
    fn method_listed(&self, attrs: &mut dyn RequestAttrs, allow: &mut Vec<String>) -> bool {
        let Some(methods) = &self.methods else {
            return true;
        };
        let listed = attrs
            .method()
            .is_some_and(|m| methods.iter().any(|x| x == m));
        if !listed && self.other_methods == OtherMethods::Refuse {
            for m in methods {
                if !allow.contains(m) {
                    allow.push(m.clone());
                }
            }
        }
        listed
    }
}

/// Lazily read request attributes other than the path, so a request whose path matches no
/// route never has its method or authority fetched from the host, and a configuration
/// without `envoy_route` entries never reads the route name.
pub trait RequestAttrs {
    fn method(&mut self) -> Option<&str>;
    fn authority(&mut self) -> Option<&str>;
    /// The name of the route Envoy chose for the request (`xds.route_name`); `None` when
    /// the route has no name or the host cannot say.
    fn envoy_route(&mut self) -> Option<&str>;
}

/// The request path as the routes see it: see [`normalize_path`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalPath {
    /// What the routes match: `;` parameters cut, unreserved `%XX` decoded, and (only when
    /// `ambiguous`) `%2F`/`%5C`/`\` as `/`, empty and dot segments resolved.
    pub path: String,
    /// `path` differs from the request's: a priced request is forwarded with `path`.
    pub changed: bool,
    /// `%2F`, `%5C`, `\`, `//`, `/./` or `/../`: upstreams disagree on what this is, so a
    /// request for a priced path written so is refused (400).
    pub ambiguous: bool,
}

/// Unreserved characters (RFC 3986): `%XX` of these means the character itself.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Normalises `path` (query excluded) the way common upstreams read it, so no spelling of a
/// priced path reaches them unpriced: each segment is cut at `;` (Tomcat/Spring path
/// parameters), `%XX` of an unreserved character is decoded (`%61` is `a`), other escapes
/// are kept. `%2F`, `%5C`, `\`, `//` and `.`/`..` segments make it `ambiguous`; `path` is
/// then the resolved form (escaped slashes as `/`, empty segments merged, dots resolved),
/// used only to find out whether a priced route is concerned. `None` when nothing changes
/// (the common case: no allocation).
pub fn normalize_path(path: &str) -> Option<NormalPath> {
    let p = path_only(path);
    let plain = !p.bytes().any(|b| matches!(b, b'%' | b';' | b'\\'))
        && !p.contains("//")
        && !p.contains("/.");
    if plain || !p.starts_with('/') {
        return None;
    }
    let mut changed = false;
    let mut ambiguous = p.contains('\\');
    let mut joined: Vec<u8> = Vec::with_capacity(p.len());
    for (i, seg) in p.split(['/', '\\']).enumerate() {
        if i > 0 {
            joined.push(b'/');
        }
        let seg = match seg.find(';') {
            Some(k) => {
                changed = true;
                &seg[..k]
            }
            None => seg,
        };
        let b = seg.as_bytes();
        let mut j = 0;
        while j < b.len() {
            let decoded = match (
                b[j],
                b.get(j + 1).copied().and_then(hex),
                b.get(j + 2).copied().and_then(hex),
            ) {
                (b'%', Some(h), Some(l)) => Some(h * 16 + l),
                _ => None,
            };
            match decoded {
                Some(c) if unreserved(c) => {
                    joined.push(c);
                    changed = true;
                    j += 3;
                }
                Some(b'/') | Some(b'\\') => {
                    joined.push(b'/');
                    ambiguous = true;
                    j += 3;
                }
                _ => {
                    joined.push(b[j]);
                    j += 1;
                }
            }
        }
    }
    // Only ASCII bytes were replaced by ASCII bytes: still UTF-8.
    let joined = String::from_utf8_lossy(&joined).into_owned();
    let body = joined.strip_prefix('/').unwrap_or(&joined);
    let parts: Vec<&str> = body.split('/').collect();
    let mut out: Vec<&str> = Vec::with_capacity(parts.len());
    let last = parts.len().saturating_sub(1);
    for (i, s) in parts.iter().enumerate() {
        match *s {
            "" if i < last => ambiguous = true,
            "." | ".." => {
                ambiguous = true;
                if *s == ".." {
                    out.pop();
                }
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    if !ambiguous && !changed {
        return None;
    }
    let path = if ambiguous {
        format!("/{}", out.join("/"))
    } else {
        joined
    };
    Some(NormalPath {
        path,
        changed,
        ambiguous,
    })
}

/// What the routes say about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// No route applies: the request passes untouched.
    Unpriced,
    /// Route `index` prices it. `rewrite`: the `:path` to forward instead of the request's
    /// (the normalised path the route matched, with the request's query).
    Priced {
        index: usize,
        rewrite: Option<String>,
    },
    /// A priced path (and host) with a method no matching route lists: 405, `allow` the
    /// methods these routes price.
    MethodNotAllowed { allow: Vec<String> },
    /// A priced path written with `%2F`, `%5C`, `\`, `//` or dot segments: 400.
    AmbiguousPath,
    /// A priced path restricted to hosts, and an authority that does not parse: 400.
    InvalidAuthority,
}

#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// Envoy route name -> indices of the routes priced on it, in config order. Empty when
    /// no route names `envoy_route`: the route name is then never read.
    by_envoy_route: HashMap<String, Vec<usize>>,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> Self {
        let mut by_envoy_route: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, r) in routes.iter().enumerate() {
            if let Selector::EnvoyRoute(name) = &r.selector {
                by_envoy_route.entry(name.clone()).or_default().push(i);
            }
        }
        RouteTable {
            routes,
            by_envoy_route,
        }
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

    /// Index of the first route pricing the request, `None` otherwise (whatever the reason).
    #[cfg(test)]
    pub fn find(&self, path: &str, attrs: &mut dyn RequestAttrs) -> Option<usize> {
        match self.lookup(path, attrs) {
            Lookup::Priced { index, .. } => Some(index),
            _ => None,
        }
    }

    /// What the routes say about the request. `path` is `:path` as received (the query
    /// string is ignored). First the routes priced on the request's Envoy route name (if
    /// any route names one), then the path routes: the first whose Envoy route (or path and
    /// host) and method match prices it. Envoy routed the request itself, so a route found
    /// by name is priced on the path as sent (no rewrite, no ambiguity check: whatever
    /// spelling reached that Envoy route is that route's). A path route whose path matches
    /// (raw or normalised) makes an ambiguous spelling a 400; one whose path matches and that
    /// names `hosts` makes an unparsable authority a 400. A route whose selector matches but
    /// not the method (`other_methods: refuse`) makes the request a 405 unless a later route
    /// prices it.
    pub fn lookup(&self, path: &str, attrs: &mut dyn RequestAttrs) -> Lookup {
        let mut allow: Vec<String> = Vec::new();
        if !self.by_envoy_route.is_empty() {
            let named = attrs
                .envoy_route()
                .and_then(|name| self.by_envoy_route.get(name));
            for &i in named.into_iter().flatten() {
                let Some(r) = self.routes.get(i) else {
                    continue;
                };
                if r.method_listed(attrs, &mut allow) {
                    return Lookup::Priced {
                        index: i,
                        rewrite: None,
                    };
                }
            }
        }
        let raw = path_only(path);
        let norm = normalize_path(path);
        let matched = norm.as_ref().map_or(raw, |n| n.path.as_str());
        let (mut lower_raw, mut lower) = (None, None);
        let mut host: Option<Option<String>> = None;
        for (i, r) in self.routes.iter().enumerate() {
            let by_norm = r.path_matches(matched, &mut lower);
            if let Some(n) = &norm {
                if n.ambiguous && (by_norm || r.path_matches(raw, &mut lower_raw)) {
                    return Lookup::AmbiguousPath;
                }
            }
            if !by_norm {
                continue;
            }
            if let Some(hosts) = &r.hosts {
                let h = host.get_or_insert_with(|| attrs.authority().and_then(parse_authority));
                let Some(h) = h.as_deref() else {
                    return Lookup::InvalidAuthority;
                };
                if !hosts.iter().any(|p| p.matches(h)) {
                    continue;
                }
            }
            if !r.method_listed(attrs, &mut allow) {
                continue;
            }
            let rewrite = norm
                .as_ref()
                .filter(|n| n.changed)
                .map(|n| format!("{}{}", n.path, &path[raw.len()..]));
            return Lookup::Priced { index: i, rewrite };
        }
        if allow.is_empty() {
            Lookup::Unpriced
        } else {
            Lookup::MethodNotAllowed { allow }
        }
    }
}

/// The path without query string or fragment.
pub fn path_only(path: &str) -> &str {
    match path.find(['?', '#']) {
        Some(i) => &path[..i],
        None => path,
    }
}

// ---------------------------------------------------------------------------------------
// Shadowing (checked at config load)
// ---------------------------------------------------------------------------------------

impl PathMatch {
    /// The pattern lower-cased (a case-insensitive route matches lower-cased paths).
    pub fn to_lower(&self) -> PathMatch {
        match self {
            PathMatch::Prefix(p) => PathMatch::Prefix(p.to_ascii_lowercase()),
            PathMatch::Exact(e) => PathMatch::Exact(e.to_ascii_lowercase()),
            PathMatch::Template(segs) => PathMatch::Template(
                segs.iter()
                    .map(|s| match s {
                        Seg::Literal(l) => Seg::Literal(l.to_ascii_lowercase()),
                        other => other.clone(),
                    })
                    .collect(),
            ),
        }
    }

    /// Every path a template matches starts with this.
    fn template_common_prefix(segs: &[Seg]) -> String {
        let mut out = String::new();
        for s in segs {
            match s {
                Seg::Literal(l) => {
                    out.push('/');
                    out.push_str(l);
                }
                Seg::One => {
                    out.push('/');
                    return out;
                }
                Seg::Rest => break,
            }
        }
        if out.is_empty() {
            out.push('/');
        }
        out
    }

    /// Does every path `later` matches also match `self`?
    pub fn covers(&self, later: &PathMatch) -> bool {
        match (self, later) {
            (PathMatch::Prefix(p), PathMatch::Prefix(q)) => q.starts_with(p.as_str()),
            (PathMatch::Prefix(p), PathMatch::Exact(e)) => e.starts_with(p.as_str()),
            (PathMatch::Prefix(p), PathMatch::Template(segs)) => {
                Self::template_common_prefix(segs).starts_with(p.as_str())
            }
            (PathMatch::Exact(e), PathMatch::Exact(f)) => e == f,
            (PathMatch::Exact(e), PathMatch::Template(segs)) => {
                segs.iter().all(|s| matches!(s, Seg::Literal(_)))
                    && Self::template_common_prefix(segs) == *e
            }
            (PathMatch::Template(_), PathMatch::Exact(e)) => {
                self.matches(e) && self.matches(&format!("{e}/"))
            }
            (PathMatch::Template(a), PathMatch::Template(b)) => template_covers(a, b),
            (PathMatch::Template(a), PathMatch::Prefix(q)) => {
                // `/lit/**` covers every prefix that starts with `/lit/`.
                match a.split_last() {
                    Some((Seg::Rest, lits))
                        if lits.iter().all(|s| matches!(s, Seg::Literal(_))) =>
                    {
                        let base = Self::template_common_prefix(lits);
                        let base = if base.ends_with('/') {
                            base
                        } else {
                            format!("{base}/")
                        };
                        q.starts_with(&base)
                    }
                    _ => false,
                }
            }
            (PathMatch::Exact(_), PathMatch::Prefix(_)) => false,
        }
    }

    /// Can the pattern match a path under `prefix` (which ends with `/`)?
    pub fn overlaps_prefix(&self, prefix: &str) -> bool {
        match self {
            PathMatch::Prefix(p) => p.starts_with(prefix) || prefix.starts_with(p.as_str()),
            PathMatch::Exact(e) => e.starts_with(prefix) || format!("{e}/") == prefix,
            PathMatch::Template(segs) => {
                let want: Vec<&str> = prefix.trim_matches('/').split('/').collect();
                for (i, w) in want.iter().enumerate() {
                    match segs.get(i) {
                        None => return false,
                        Some(Seg::Rest) => return true,
                        Some(Seg::One) => {}
                        Some(Seg::Literal(l)) if l == w => {}
                        Some(Seg::Literal(_)) => return false,
                    }
                }
                true
            }
        }
    }

    /// Is the pattern strictly broader than `prefix` (which ends with `/`): does it match
    /// every path under it and paths elsewhere (a catch-all such as `/` or `/**`)?
    pub fn covers_prefix(&self, prefix: &str) -> bool {
        match self {
            PathMatch::Prefix(p) => prefix.starts_with(p.as_str()) && p.len() < prefix.len(),
            PathMatch::Exact(_) => false,
            PathMatch::Template(segs) => {
                let want: Vec<&str> = prefix.trim_matches('/').split('/').collect();
                for (i, w) in want.iter().enumerate() {
                    match segs.get(i) {
                        Some(Seg::Rest) => return true,
                        Some(Seg::One) => {}
                        Some(Seg::Literal(l)) if l == w => {}
                        _ => return false,
                    }
                }
                false
            }
        }
    }
}

/// Does every path template `b` matches also match template `a`?
fn template_covers(a: &[Seg], b: &[Seg]) -> bool {
    let mut bi = b.iter();
    for s in a {
        match (s, bi.next()) {
            (Seg::Rest, _) => return true,
            (Seg::One, Some(Seg::One)) => {}
            (Seg::One, Some(Seg::Literal(l))) if !l.is_empty() => {}
            (Seg::Literal(x), Some(Seg::Literal(y))) if x == y => {}
            _ => return false,
        }
    }
    bi.next().is_none()
}

/// Can one request match both method lists (`None`: every method)?
pub fn methods_overlap(a: &Option<Vec<String>>, b: &Option<Vec<String>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
        _ => true,
    }
}

/// Can one request match both host lists (`None`: every host)?
pub fn hosts_overlap(a: &Option<Vec<HostPattern>>, b: &Option<Vec<HostPattern>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.iter().any(|x| b.iter().any(|y| x.overlaps(y))),
        _ => true,
    }
}

/// Does `earlier` match every request `later` matches, for some shared method and host?
/// (`later` can then never price those requests.) Two routes on the same Envoy route name
/// with a shared method do; a route by name and a path route never do (Envoy's routing is
/// not known here, and the name is looked up first).
pub fn shadows(earlier: &Route, later: &Route) -> bool {
    let covered = match (&earlier.selector, &later.selector) {
        (Selector::EnvoyRoute(a), Selector::EnvoyRoute(b)) => a == b,
        (Selector::Path(e), Selector::Path(l)) => {
            match (earlier.case_insensitive, later.case_insensitive) {
                // A case-insensitive earlier route compares in lower case (its pattern already
                // is).
                (true, _) => e.covers(&l.to_lower()),
                // A case-sensitive route never covers every spelling of a case-insensitive one.
                (false, true) => false,
                (false, false) => e.covers(l),
            }
        }
        _ => false,
    };
    covered
        && methods_overlap(&earlier.methods, &later.methods)
        && hosts_overlap(&earlier.hosts, &later.hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Attrs {
        method: Option<String>,
        authority: Option<String>,
        envoy_route: Option<String>,
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
        fn envoy_route(&mut self) -> Option<&str> {
            self.fetched += 1;
            self.envoy_route.as_deref()
        }
    }
    fn attrs(m: &str, a: &str) -> Attrs {
        Attrs {
            method: Some(m.into()),
            authority: Some(a.into()),
            envoy_route: None,
            fetched: 0,
        }
    }
    fn on_envoy_route(m: &str, envoy_route: Option<&str>) -> Attrs {
        Attrs {
            envoy_route: envoy_route.map(String::from),
            ..attrs(m, "h")
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
        let parse = |a: &str| parse_authority(a);
        assert_eq!(
            parse("API.Example.com:8080").as_deref(),
            Some("api.example.com")
        );
        assert_eq!(
            parse("api.example.com.").as_deref(),
            Some("api.example.com")
        );
        assert_eq!(
            parse("api.example.com.:443").as_deref(),
            Some("api.example.com")
        );
        assert_eq!(parse("[::1]:443").as_deref(), Some("[::1]"));
        assert_eq!(parse("[::1]").as_deref(), Some("[::1]"));
        assert_eq!(parse("host").as_deref(), Some("host"));
        assert_eq!(parse("10.0.0.1:80").as_deref(), Some("10.0.0.1"));
    }

    #[test]
    fn authorities_that_do_not_parse() {
        for bad in [
            "",
            ":",
            ":80",
            "api.example.com:",
            "api.example.com:abc",
            "api.example.com:80x",
            "api.example.com:123456",
            "api.example.com:65536",
            "api.example.com:+80",
            "api.example.com:80:80",
            "api.example.com..",
            "api..example.com",
            ".",
            "api example.com",
            "api.example.com/x",
            "api.example.com%2e",
            "user@api.example.com",
            "::1",
            "[::1",
            "[::1]x",
            "[::1]:",
            "[]",
            "[zz::1]",
            "\u{e9}.example.com",
        ] {
            assert_eq!(parse_authority(bad), None, "{bad:?}");
        }
    }

    fn route(
        name: &str,
        matcher: PathMatch,
        methods: Option<&[&str]>,
        hosts: Option<&[&str]>,
    ) -> Route {
        let cfg = crate::test_fixtures::sample_config();
        let proto = cfg.routes.get(0).unwrap();
        Route {
            name: name.into(),
            selector: Selector::Path(matcher),
            case_insensitive: false,
            methods: methods.map(|m| m.iter().map(|s| s.to_string()).collect()),
            other_methods: OtherMethods::Refuse,
            hosts: hosts.map(|h| h.iter().map(|s| HostPattern::parse(s).unwrap()).collect()),
            description: String::new(),
            mime_type: String::new(),
            accepts: proto.accepts.clone(),
            unsettled_token_ttl_secs: None,
            token_endpoint: String::new(),
            challenge: proto.challenge.clone(),
            failure_mode: proto.failure_mode,
            cache_control: proto.cache_control,
            forward_token: false,
            charge_on_upstream_error: false,
            settlement: crate::policy::Settlement::Async,
        }
    }

    fn norm(p: &str) -> Option<(String, bool, bool)> {
        normalize_path(p).map(|n| (n.path, n.changed, n.ambiguous))
    }

    #[test]
    fn path_normalisation() {
        for plain in [
            "/",
            "/api/weather",
            "/api/weather/",
            "/.well-known/x",
            "/a.b/c",
            "/x?%2F=;",
        ] {
            assert_eq!(norm(plain), None, "{plain}");
        }
        let changed = |p: &str, want: &str| {
            assert_eq!(norm(p), Some((want.to_string(), true, false)), "{p}");
        };
        changed("/api;x/weather", "/api/weather");
        changed("/api/weather;x", "/api/weather");
        changed("/api/weather;jsessionid=1?q=1", "/api/weather");
        changed("/api/%77eather", "/api/weather");
        changed("/%61pi/weather", "/api/weather");
        changed("/api/w%65%61ther%7E", "/api/weather~");
        // Other escapes are kept (and are no change).
        assert_eq!(norm("/caf%C3%A9"), None);
        assert_eq!(norm("/a%3Bb"), None, "an escaped ';' is no parameter");
        assert_eq!(norm("/a%zz"), None);
        let ambiguous = |p: &str, want: &str| {
            let (path, _, amb) = norm(p).unwrap_or_else(|| panic!("{p}"));
            assert!(amb, "{p}");
            assert_eq!(path, want, "{p}");
        };
        ambiguous("/api%2Fweather", "/api/weather");
        ambiguous("/api%2fweather", "/api/weather");
        ambiguous("/api%5Cweather", "/api/weather");
        ambiguous("/api%5cweather", "/api/weather");
        ambiguous("/api\\weather", "/api/weather");
        ambiguous("/api//weather", "/api/weather");
        ambiguous("//api/weather", "/api/weather");
        ambiguous("/api/./weather", "/api/weather");
        ambiguous("/static/../api/weather", "/api/weather");
        ambiguous("/static/%2E%2E/api/weather", "/api/weather");
        ambiguous("/static/..;/api/weather", "/api/weather");
        ambiguous("/../../api/weather", "/api/weather");
        ambiguous("/api/weather/.", "/api/weather/");
        ambiguous("/api/;x/weather", "/api/weather");
    }

    #[test]
    fn tricks_on_a_priced_path_are_priced_or_refused() {
        let get_only: Option<&[&str]> = Some(&["GET", "HEAD"]);
        let table = RouteTable::new(vec![
            route(
                "w",
                PathMatch::Prefix("/api/weather".into()),
                get_only,
                None,
            ),
            route(
                "h",
                PathMatch::Exact("/hosted".into()),
                None,
                Some(&["api.example.com"]),
            ),
        ]);
        let get = |p: &str| table.lookup(p, &mut attrs("GET", "api.example.com"));
        let priced = |index: usize, rewrite: Option<&str>| Lookup::Priced {
            index,
            rewrite: rewrite.map(String::from),
        };
        assert_eq!(get("/api/weather"), priced(0, None));
        assert_eq!(
            get("/api;x/weather?city=1"),
            priced(0, Some("/api/weather?city=1"))
        );
        assert_eq!(get("/api/weather;x"), priced(0, Some("/api/weather")));
        assert_eq!(get("/api/%77eather"), priced(0, Some("/api/weather")));
        for p in [
            "/api%2Fweather",
            "/api%2fweather",
            "/api%5Cweather",
            "/api\\weather",
            "/api//weather",
            "//api/weather",
            "/x/../api/weather",
            "/api/weather/../../x",
            "/api/./weather",
        ] {
            assert_eq!(get(p), Lookup::AmbiguousPath, "{p}");
        }
        // The same spellings elsewhere are none of the filter's business.
        for p in [
            "/static%2Fx",
            "/static//x",
            "/a/../static",
            "/static;x",
            "/API/weather",
        ] {
            assert_eq!(get(p), Lookup::Unpriced, "{p}");
        }
        // Methods: 405 listing the priced ones.
        for m in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"] {
            assert_eq!(
                table.lookup("/api/weather", &mut attrs(m, "x")),
                Lookup::MethodNotAllowed {
                    allow: vec!["GET".into(), "HEAD".into()]
                },
                "{m}"
            );
        }
        // Hosts: case, port and trailing dot are ignored; an authority that does not parse
        // is refused; another host is not this route's.
        for a in [
            "api.example.com",
            "API.EXAMPLE.COM",
            "api.example.com:8443",
            "api.example.com.",
        ] {
            assert_eq!(
                table.lookup("/hosted", &mut attrs("GET", a)),
                priced(1, None),
                "{a}"
            );
        }
        for a in ["api.example.com:abc", "", "api.example.com:", "a b"] {
            assert_eq!(
                table.lookup("/hosted", &mut attrs("GET", a)),
                Lookup::InvalidAuthority,
                "{a:?}"
            );
        }
        let mut none = Attrs {
            method: Some("GET".into()),
            authority: None,
            envoy_route: None,
            fetched: 0,
        };
        assert_eq!(table.lookup("/hosted", &mut none), Lookup::InvalidAuthority);
        assert_eq!(
            table.lookup("/hosted", &mut attrs("GET", "10.0.0.1")),
            Lookup::Unpriced
        );
        // An unpriced path never reads the authority, even a bad one.
        let mut bad = attrs("GET", "x:abc");
        assert_eq!(table.lookup("/other", &mut bad), Lookup::Unpriced);
        assert_eq!(bad.fetched, 0);
    }

    #[test]
    fn method_refusal_gives_way_to_a_later_route_and_pass_routes_do_not_refuse() {
        let get: Option<&[&str]> = Some(&["GET", "HEAD"]);
        let mut pass = route("p", PathMatch::Prefix("/a".into()), get, None);
        pass.other_methods = OtherMethods::Pass;
        let table = RouteTable::new(vec![
            route("g", PathMatch::Prefix("/api".into()), get, None),
            route(
                "p2",
                PathMatch::Prefix("/api".into()),
                Some(&["POST"]),
                None,
            ),
            pass,
        ]);
        assert_eq!(
            table.lookup("/api/x", &mut attrs("POST", "h")),
            Lookup::Priced {
                index: 1,
                rewrite: None
            }
        );
        assert_eq!(
            table.lookup("/api/x", &mut attrs("PUT", "h")),
            Lookup::MethodNotAllowed {
                allow: vec!["GET".into(), "HEAD".into(), "POST".into()]
            }
        );
        assert_eq!(
            table.lookup("/a", &mut attrs("POST", "h")),
            Lookup::Unpriced
        );
        assert_eq!(
            table.lookup("/a", &mut attrs("HEAD", "h")),
            Lookup::Priced {
                index: 2,
                rewrite: None
            }
        );
    }

    #[test]
    fn case_insensitive_routes_match_every_spelling() {
        let mut ci = route("ci", PathMatch::Prefix("/api/weather".into()), None, None);
        ci.case_insensitive = true;
        let table = RouteTable::new(vec![ci]);
        for p in [
            "/api/weather",
            "/API/weather",
            "/Api/WEATHER/x",
            "/API;x/Weather",
        ] {
            assert!(
                matches!(
                    table.lookup(p, &mut attrs("GET", "h")),
                    Lookup::Priced { index: 0, .. }
                ),
                "{p}"
            );
        }
        assert_eq!(
            table.lookup("/API%2Fweather", &mut attrs("GET", "h")),
            Lookup::AmbiguousPath
        );
        // Forwarded as sent but for the ';' parameters and escapes.
        assert_eq!(
            table.lookup("/API;x/weather", &mut attrs("GET", "h")),
            Lookup::Priced {
                index: 0,
                rewrite: Some("/API/weather".into())
            }
        );
    }

    #[test]
    fn shadowing() {
        let p = |s: &str| PathMatch::Prefix(s.into());
        let e = |s: &str| PathMatch::Exact(s.into());
        let get: Option<&[&str]> = Some(&["GET", "HEAD"]);
        let post: Option<&[&str]> = Some(&["POST"]);
        let r = |m: PathMatch| route("x", m, None, None);
        // An earlier prefix covers a later prefix / exact / template under it.
        assert!(shadows(&r(p("/api")), &r(p("/api/weather"))));
        assert!(shadows(&r(p("/api")), &r(p("/api"))));
        assert!(shadows(&r(p("/api/")), &r(e("/api/weather"))));
        assert!(shadows(
            &r(p("/api/users")),
            &r(t("/api/users/{id}/report"))
        ));
        assert!(shadows(&r(p("/api/users/")), &r(t("/api/users/{id}"))));
        assert!(shadows(&r(p("/")), &r(t("/**"))));
        assert!(
            !shadows(&r(p("/api/weather")), &r(p("/api"))),
            "the broader one later is fine"
        );
        assert!(!shadows(&r(p("/api/users/")), &r(t("/api/{x}"))));
        // Exact and templates.
        assert!(shadows(&r(e("/x")), &r(e("/x"))));
        assert!(shadows(&r(e("/a/b")), &r(t("/a/b"))));
        assert!(!shadows(&r(e("/x")), &r(p("/x"))));
        assert!(shadows(&r(t("/a/{id}")), &r(e("/a/b"))));
        assert!(shadows(&r(t("/a/*")), &r(t("/a/{id}"))));
        assert!(shadows(&r(t("/a/**")), &r(t("/a/{id}/b"))));
        assert!(shadows(&r(t("/a/**")), &r(p("/a/b"))));
        assert!(!shadows(&r(t("/a/{id}")), &r(t("/a/{id}/b"))));
        assert!(!shadows(&r(t("/a/b")), &r(t("/a/{id}"))));
        // Methods and hosts must overlap.
        let get_post: Option<&[&str]> = Some(&["GET", "POST"]);
        assert!(!shadows(
            &route("a", p("/api"), get, None),
            &route("b", p("/api/w"), post, None)
        ));
        assert!(shadows(
            &route("a", p("/api"), get, None),
            &route("b", p("/api/w"), get_post, None)
        ));
        assert!(shadows(
            &route("a", p("/api"), None, None),
            &route("b", p("/api/w"), post, None)
        ));
        let host = |h: &'static [&'static str]| route("h", p("/api"), None, Some(h));
        let later = |h: Option<&'static [&'static str]>| route("b", p("/api/w"), None, h);
        assert!(!shadows(&host(&["a.com"]), &later(Some(&["b.com"]))));
        assert!(shadows(&host(&["a.com"]), &later(None)));
        assert!(shadows(&host(&["*.a.com"]), &later(Some(&["x.a.com"]))));
        assert!(shadows(&host(&["*.a.com"]), &later(Some(&["*.b.a.com"]))));
        assert!(!shadows(&host(&["*.a.com"]), &later(Some(&["a.com"]))));
        // Case: an insensitive earlier route (its pattern lower-cased) covers every
        // spelling; a sensitive one does not cover an insensitive later one.
        let mut ci = r(p("/api"));
        ci.case_insensitive = true;
        assert!(shadows(&ci, &r(p("/API/weather"))));
        let mut ci_later = r(p("/api/weather"));
        ci_later.case_insensitive = true;
        assert!(!shadows(&r(p("/api")), &ci_later));
    }

    #[test]
    fn token_endpoint_namespace() {
        let tp = "/x402/token/";
        for m in [
            PathMatch::Prefix("/x402/token/".into()),
            PathMatch::Prefix("/x402/token/weather".into()),
            PathMatch::Exact("/x402/token/weather".into()),
            PathMatch::Exact("/x402/token".into()),
            t("/x402/token/{name}"),
            t("/x402/{x}/weather"),
            t("/x402/token/**"),
            t("/x402/token"),
        ] {
            assert!(m.overlaps_prefix(tp) && !m.covers_prefix(tp), "{m:?}");
        }
        // Catch-alls: the token endpoint answers its namespace first, as documented.
        for m in [
            PathMatch::Prefix("/".into()),
            PathMatch::Prefix("/x402/".into()),
            t("/**"),
            t("/x402/**"),
            t("/{a}/**"),
        ] {
            assert!(m.covers_prefix(tp), "{m:?}");
        }
        for m in [
            PathMatch::Prefix("/api".into()),
            PathMatch::Exact("/x402".into()),
            t("/x402/tokens/{x}"),
            t("/x402"),
        ] {
            assert!(!m.overlaps_prefix(tp), "{m:?}");
        }
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
                    envoy_route: None,
                    fetched: 0
                }
            ),
            None
        );
        assert_eq!(table.by_name("report"), Some(1));
        assert_eq!(path_only("/a?b#c"), "/a");
        assert_eq!(path_only("/a#c"), "/a");
    }

    fn by_envoy_route(name: &str, envoy_route: &str, methods: Option<&[&str]>) -> Route {
        Route {
            selector: Selector::EnvoyRoute(envoy_route.into()),
            ..route(name, PathMatch::Exact("/unused".into()), methods, None)
        }
    }

    #[test]
    fn envoy_route_names_price_before_paths_and_are_read_only_when_configured() {
        let get: Option<&[&str]> = Some(&["GET", "HEAD"]);
        let mut pass = by_envoy_route("p", "pass_route", Some(&["POST"]));
        pass.other_methods = OtherMethods::Pass;
        let table = RouteTable::new(vec![
            route("path", PathMatch::Prefix("/api".into()), None, None),
            by_envoy_route("named", "weather_route", get),
            by_envoy_route("named-post", "weather_route", Some(&["POST"])),
            pass,
        ]);
        let priced = |index: usize| Lookup::Priced {
            index,
            rewrite: None,
        };
        // By name first, whatever the path (Envoy routed it), the path as sent.
        for p in ["/api/weather", "/elsewhere", "/w;x/%61"] {
            assert_eq!(
                table.lookup(p, &mut on_envoy_route("GET", Some("weather_route"))),
                priced(1),
                "{p}"
            );
        }
        assert_eq!(
            table.lookup("/x", &mut on_envoy_route("POST", Some("weather_route"))),
            priced(2)
        );
        // A method neither route on that name lists: 405 naming both.
        assert_eq!(
            table.lookup("/x", &mut on_envoy_route("PUT", Some("weather_route"))),
            Lookup::MethodNotAllowed {
                allow: vec!["GET".into(), "HEAD".into(), "POST".into()]
            }
        );
        // `other_methods: pass` falls through to the path routes (here none prices /x).
        assert_eq!(
            table.lookup("/x", &mut on_envoy_route("GET", Some("pass_route"))),
            Lookup::Unpriced
        );
        assert_eq!(
            table.lookup("/api/x", &mut on_envoy_route("GET", Some("pass_route"))),
            priced(0)
        );
        // An Envoy route the config does not price, or no name: the path routes decide.
        for name in [Some("other_route"), Some(""), None] {
            assert_eq!(
                table.lookup("/static", &mut on_envoy_route("GET", name)),
                Lookup::Unpriced,
                "{name:?}"
            );
            assert_eq!(
                table.lookup("/api/x", &mut on_envoy_route("GET", name)),
                priced(0),
                "{name:?}"
            );
        }
        // A route by name never matches by path.
        assert_eq!(
            table.lookup("/unused", &mut on_envoy_route("GET", None)),
            Lookup::Unpriced
        );
        // Without envoy_route entries the name is never read.
        let plain = RouteTable::new(vec![route(
            "w",
            PathMatch::Prefix("/api".into()),
            None,
            None,
        )]);
        let mut a = on_envoy_route("GET", Some("weather_route"));
        assert_eq!(plain.lookup("/static", &mut a), Lookup::Unpriced);
        assert_eq!(a.fetched, 0, "nothing read for an unpriced request");
    }

    #[test]
    fn envoy_route_shadowing() {
        let get: Option<&[&str]> = Some(&["GET", "HEAD"]);
        let post: Option<&[&str]> = Some(&["POST"]);
        let a = by_envoy_route("a", "r1", None);
        assert!(shadows(&a, &by_envoy_route("b", "r1", None)));
        assert!(shadows(&a, &by_envoy_route("b", "r1", post)));
        assert!(!shadows(&a, &by_envoy_route("b", "r2", None)));
        assert!(!shadows(
            &by_envoy_route("a", "r1", get),
            &by_envoy_route("b", "r1", post)
        ));
        // Names and paths never shadow each other.
        let catch_all = route("c", PathMatch::Prefix("/".into()), None, None);
        assert!(!shadows(&catch_all, &a));
        assert!(!shadows(&a, &catch_all));
    }
}
