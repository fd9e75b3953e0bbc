//! The request headers as the flow reads them: the whole map listed once (one host call),
//! or, if the host cannot list it, one host call per name. Also the anti-spoofing strip
//! rules of [`crate::identity`], which only make host calls for names actually present.

use std::borrow::Cow;

use super::log;
use crate::headers::HeaderPairs;
use crate::host_api::Host;
use crate::identity;
use crate::routes::RequestAttrs;

pub(super) struct RequestHeaders<'h, H: Host> {
    host: &'h H,
    /// `None`: the host could not list the headers.
    map: Option<HeaderPairs>,
}

impl<'h, H: Host> RequestHeaders<'h, H> {
    pub(super) fn fetch(host: &'h H) -> Self {
        let map = host.request_header_map().and_then(|buf| {
            let map = HeaderPairs::parse(buf);
            if map.is_none() {
                log!(host, Warn, "x402: cannot read the request header list");
            }
            map
        });
        RequestHeaders { host, map }
    }

    /// A request header as text. Bytes that are not UTF-8 become U+FFFD (a client can send
    /// them), so such a token is malformed and such a path still matches its priced prefix.
    pub(super) fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        match &self.map {
            Some(m) => m.get_str(name),
            None => self.host.request_header(name).map(Cow::Owned),
        }
    }

    /// Unpriced requests: removes the identity headers by name (only those present when the
    /// map is known: usually no host call at all).
    pub(super) fn strip_identity(&self) {
        if let Some(m) = &self.map {
            if !m.has_reserved() {
                return;
            }
        }
        for name in identity::IDENTITY {
            if let Some(m) = &self.map {
                if !m.contains(name) {
                    continue;
                }
            }
            // As before the refactor: a failed removal on an unpriced request is not logged.
            let _ = self.host.remove_request_header(name);
        }
    }

    /// Every request: removes the method-override headers ([`identity::METHOD_OVERRIDE`]),
    /// those present (no host call for a request without them), so an upstream framework
    /// that honours them cannot serve a priced method to a request priced as another (or
    /// not priced at all).
    pub(super) fn strip_method_override(&self) {
        for name in identity::METHOD_OVERRIDE {
            // Cannot list them: removed blindly, as the identity names.
            let present = self.map.as_ref().is_none_or(|m| m.contains(name));
            if present {
                if let Err(e) = self.host.remove_request_header(name) {
                    log!(
                        self.host,
                        Warn,
                        "x402: cannot remove request header {name}: {e}"
                    );
                }
            }
        }
    }

    /// Priced requests: removes every client-supplied `x-x402-*` request header.
    pub(super) fn strip_reserved(&self) {
        let names = match &self.map {
            Some(m) => m.reserved_names(),
            // Cannot list them: at least the identity names go.
            None => identity::IDENTITY.iter().map(|n| n.to_string()).collect(),
        };
        for name in names {
            if let Err(e) = self.host.remove_request_header(&name) {
                log!(
                    self.host,
                    Warn,
                    "x402: cannot remove request header {name}: {e}"
                );
            }
        }
    }
}

/// Method, authority and Envoy route name, read only when a route needs them.
pub(super) struct Attrs<'a, 'h, H: Host> {
    headers: &'a RequestHeaders<'h, H>,
    method: Option<Option<Cow<'a, str>>>,
    authority: Option<Option<Cow<'a, str>>>,
    envoy_route: Option<Option<String>>,
}

impl<'a, 'h, H: Host> Attrs<'a, 'h, H> {
    pub(super) fn new(headers: &'a RequestHeaders<'h, H>) -> Self {
        Attrs {
            headers,
            method: None,
            authority: None,
            envoy_route: None,
        }
    }
}

impl<H: Host> RequestAttrs for Attrs<'_, '_, H> {
    fn method(&mut self) -> Option<&str> {
        let h = self.headers;
        self.method
            .get_or_insert_with(|| h.get(":method"))
            .as_deref()
    }
    fn authority(&mut self) -> Option<&str> {
        let h = self.headers;
        self.authority
            .get_or_insert_with(|| h.get(":authority"))
            .as_deref()
    }
    fn envoy_route(&mut self) -> Option<&str> {
        let host = self.headers.host;
        self.envoy_route
            .get_or_insert_with(|| host.route_name())
            .as_deref()
    }
}
