//! A [`Host`] that records what the flow does (replies, header edits, callouts, counters,
//! logs, host calls) and answers from what the test set up, with failures on demand.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use log::Level;

use crate::answer::HttpAnswer;
use crate::headers;
use crate::host_api::{Host, HostError};

type Pairs = Vec<(String, String)>;

/// A request-header or response-header edit, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Edit {
    SetRequest(String, String),
    RemoveRequest(String),
    SetResponse(String, String),
}

/// A callout the flow dispatched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Callout {
    pub(crate) cluster: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
    pub(crate) timeout: Duration,
}

impl Callout {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A local reply, with the context it was sent on (`None`: the request's own callback).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) context: Option<u32>,
    pub(crate) answer: HttpAnswer,
}

impl Reply {
    pub(crate) fn status(&self) -> u32 {
        self.answer.status
    }
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.answer.body).unwrap()
    }
    /// The JSON body's `error` code.
    pub(crate) fn code(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.answer.header(name)
    }
}

#[derive(Default)]
pub(crate) struct FakeHost {
    /// The request headers as the host holds them (edits apply to them).
    request: RefCell<Vec<(String, Vec<u8>)>>,
    /// The request body buffered so far.
    body: RefCell<Vec<u8>>,
    /// The Envoy route name of the request (`xds.route_name`).
    route_name: RefCell<Option<String>>,
    /// The callout's answer: headers and body.
    callout_answer: RefCell<(Pairs, Vec<u8>)>,
    now: Cell<Duration>,
    /// The header list comes back truncated (not a well-formed map).
    corrupt_map: Cell<bool>,
    /// Host calls that fail, by method name, with the status they return.
    failing: RefCell<HashMap<&'static str, u32>>,

    pub(crate) edits: RefCell<Vec<Edit>>,
    pub(crate) callouts: RefCell<Vec<Callout>>,
    pub(crate) replies: RefCell<Vec<Reply>>,
    pub(crate) resumed: Cell<u32>,
    /// `resume_response` calls.
    pub(crate) resumed_responses: Cell<u32>,
    /// The upstream's response headers, as `response_header` reads them.
    pub(crate) response: RefCell<Vec<(String, String)>>,
    effective: Cell<Option<u32>>,
    /// Counter names, by id.
    counter_names: RefCell<Vec<String>>,
    counter_values: RefCell<Vec<u64>>,
    pub(crate) tick_period: Cell<Option<Duration>>,
    pub(crate) logs: RefCell<Vec<(Level, String)>>,
    shared: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    /// Every host call but `log`.
    pub(crate) calls: Cell<u32>,
}

impl FakeHost {
    pub(crate) fn new() -> Self {
        FakeHost::default()
    }

    /// A new request with these headers (and no body); the records are kept.
    pub(crate) fn request(&self, headers: &[(&str, &str)]) {
        *self.request.borrow_mut() = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect();
        self.body.borrow_mut().clear();
    }

    /// The Envoy route name the next requests come with (`None`: a route without a name).
    pub(crate) fn set_route_name(&self, name: Option<&str>) {
        *self.route_name.borrow_mut() = name.map(String::from);
    }

    /// Adds a raw header (e.g. bytes that are not UTF-8).
    pub(crate) fn add_raw_header(&self, name: &str, value: &[u8]) {
        self.request
            .borrow_mut()
            .push((name.to_string(), value.to_vec()));
    }

    /// More request body arrived; returns the buffered size.
    pub(crate) fn body_chunk(&self, chunk: &[u8]) -> usize {
        let mut b = self.body.borrow_mut();
        b.extend_from_slice(chunk);
        b.len()
    }

    pub(crate) fn callout_answers(&self, headers: &[(&str, &str)], body: &[u8]) -> usize {
        *self.callout_answer.borrow_mut() = (
            headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body.to_vec(),
        );
        body.len()
    }

    pub(crate) fn set_now_ms(&self, ms: u64) {
        self.now.set(Duration::from_millis(ms));
    }

    pub(crate) fn corrupt_header_map(&self) {
        self.corrupt_map.set(true);
    }

    /// Makes host call `method` fail with `status`.
    pub(crate) fn fail(&self, method: &'static str, status: u32) {
        self.failing.borrow_mut().insert(method, status);
    }

    pub(crate) fn clear_records(&self) {
        self.edits.borrow_mut().clear();
        self.callouts.borrow_mut().clear();
        self.replies.borrow_mut().clear();
        self.resumed.set(0);
        self.logs.borrow_mut().clear();
        self.calls.set(0);
        self.counter_values.borrow_mut().fill(0);
    }

    pub(crate) fn header(&self, name: &str) -> Option<String> {
        self.request
            .borrow()
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// The only reply sent (fails the test if there is not exactly one).
    pub(crate) fn reply(&self) -> Reply {
        let r = self.replies.borrow();
        assert_eq!(r.len(), 1, "replies: {r:?}");
        r[0].clone()
    }

    pub(crate) fn callout(&self) -> Callout {
        let c = self.callouts.borrow();
        assert_eq!(c.len(), 1, "callouts: {c:?}");
        c[0].clone()
    }

    pub(crate) fn counter(&self, name: &str) -> u64 {
        let names = self.counter_names.borrow();
        let id = names.iter().position(|n| n == name);
        id.map_or_else(
            || panic!("no counter {name}"),
            |i| self.counter_values.borrow()[i],
        )
    }

    /// The counters that are not zero, by name; the per-route ones (`x402_route_*`) are in
    /// [`FakeHost::route_counters`].
    pub(crate) fn counters(&self) -> Vec<(String, u64)> {
        self.nonzero(|n| !n.starts_with("x402_route_"))
    }

    /// The per-route counters that are not zero, by name.
    pub(crate) fn route_counters(&self) -> Vec<(String, u64)> {
        self.nonzero(|n| n.starts_with("x402_route_"))
    }

    fn nonzero(&self, keep: impl Fn(&str) -> bool) -> Vec<(String, u64)> {
        let names = self.counter_names.borrow();
        let values = self.counter_values.borrow();
        names
            .iter()
            .zip(values.iter())
            .filter(|(n, v)| **v > 0 && keep(n))
            .map(|(n, v)| (n.clone(), *v))
            .collect()
    }

    pub(crate) fn counter_names(&self) -> Vec<String> {
        self.counter_names.borrow().clone()
    }

    pub(crate) fn removed(&self) -> Vec<String> {
        self.edits
            .borrow()
            .iter()
            .filter_map(|e| match e {
                Edit::RemoveRequest(n) => Some(n.clone()),
                _ => None,
            })
            .collect()
    }

    pub(crate) fn set_request_headers(&self) -> Vec<(String, String)> {
        self.edits
            .borrow()
            .iter()
            .filter_map(|e| match e {
                Edit::SetRequest(n, v) => Some((n.clone(), v.clone())),
                _ => None,
            })
            .collect()
    }

    pub(crate) fn set_response_headers(&self) -> Vec<(String, String)> {
        self.edits
            .borrow()
            .iter()
            .filter_map(|e| match e {
                Edit::SetResponse(n, v) => Some((n.clone(), v.clone())),
                _ => None,
            })
            .collect()
    }

    /// Did a log line at `level` contain `text`?
    pub(crate) fn logged(&self, level: Level, text: &str) -> bool {
        self.logs
            .borrow()
            .iter()
            .any(|(l, m)| *l == level && m.contains(text))
    }

    /// Counts the call; the failure status if `method` is set to fail.
    fn call(&self, method: &'static str) -> Result<(), HostError> {
        self.calls.set(self.calls.get() + 1);
        match self.failing.borrow().get(method) {
            Some(s) => Err(HostError(*s)),
            None => Ok(()),
        }
    }
}

impl Host for FakeHost {
    fn request_header_map(&self) -> Option<Vec<u8>> {
        self.call("request_header_map").ok()?;
        let r = self.request.borrow();
        let mut map = headers::serialize(r.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
        if self.corrupt_map.get() {
            map.truncate(map.len() / 2);
        }
        Some(map)
    }

    fn request_header(&self, name: &str) -> Option<String> {
        self.call("request_header").ok()?;
        self.header(name)
    }

    fn route_name(&self) -> Option<String> {
        self.call("route_name").ok()?;
        self.route_name.borrow().clone()
    }

    fn set_request_header(&self, name: &str, value: &str) -> Result<(), HostError> {
        self.call("set_request_header")?;
        let mut r = self.request.borrow_mut();
        r.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        r.push((name.to_string(), value.as_bytes().to_vec()));
        self.edits
            .borrow_mut()
            .push(Edit::SetRequest(name.into(), value.into()));
        Ok(())
    }

    fn remove_request_header(&self, name: &str) -> Result<(), HostError> {
        self.call("remove_request_header")?;
        self.request
            .borrow_mut()
            .retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.edits
            .borrow_mut()
            .push(Edit::RemoveRequest(name.into()));
        Ok(())
    }

    fn set_response_header(&self, name: &str, value: &str) -> Result<(), HostError> {
        self.call("set_response_header")?;
        self.edits
            .borrow_mut()
            .push(Edit::SetResponse(name.into(), value.into()));
        Ok(())
    }

    fn request_body(&self, size: usize) -> Vec<u8> {
        let _ = self.call("request_body");
        let b = self.body.borrow();
        b[..size.min(b.len())].to_vec()
    }

    fn dispatch_callout(
        &self,
        cluster: &str,
        headers: Vec<(&str, &str)>,
        body: &[u8],
        timeout: Duration,
    ) -> Result<u32, HostError> {
        self.call("dispatch_callout")?;
        let mut c = self.callouts.borrow_mut();
        c.push(Callout {
            cluster: cluster.into(),
            headers: headers
                .into_iter()
                .map(|(n, v)| (n.into(), v.into()))
                .collect(),
            body: body.to_vec(),
            timeout,
        });
        Ok(c.len() as u32)
    }

    fn callout_response_headers(&self) -> Vec<u8> {
        let _ = self.call("callout_response_headers");
        let a = self.callout_answer.borrow();
        if a.0.is_empty() {
            return Vec::new();
        }
        headers::serialize(a.0.iter().map(|(n, v)| (n.as_str(), v.as_bytes())))
    }

    fn callout_response_body(&self, size: usize) -> Vec<u8> {
        let _ = self.call("callout_response_body");
        let a = self.callout_answer.borrow();
        a.1[..size.min(a.1.len())].to_vec()
    }

    fn send_reply(&self, answer: &HttpAnswer) -> Result<(), HostError> {
        self.call("send_reply")?;
        self.replies.borrow_mut().push(Reply {
            context: self.effective.get(),
            answer: answer.clone(),
        });
        Ok(())
    }

    fn resume_request(&self) -> Result<(), HostError> {
        self.call("resume_request")?;
        self.resumed.set(self.resumed.get() + 1);
        Ok(())
    }

    fn resume_response(&self) -> Result<(), HostError> {
        self.call("resume_response")?;
        self.resumed_responses.set(self.resumed_responses.get() + 1);
        Ok(())
    }

    fn response_header(&self, name: &str) -> Option<String> {
        let _ = self.call("response_header");
        self.response
            .borrow()
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }

    fn set_effective_context(&self, context_id: u32) -> Result<(), HostError> {
        self.call("set_effective_context")?;
        self.effective.set(Some(context_id));
        Ok(())
    }

    fn now(&self) -> Duration {
        match self.call("now") {
            Ok(()) => self.now.get(),
            Err(_) => Duration::ZERO,
        }
    }

    fn shared_data_get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.call("shared_data_get").ok()?;
        self.shared.borrow().get(key).cloned()
    }

    fn shared_data_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), HostError> {
        self.call("shared_data_set")?;
        let mut s = self.shared.borrow_mut();
        let version = s.get(key).map_or(0, |(_, v)| *v);
        if cas.is_some_and(|c| c != version) {
            return Err(HostError(8));
        }
        s.insert(key.to_string(), (value.to_vec(), version + 1));
        Ok(())
    }

    fn define_counter(&self, name: &str) -> Result<u32, HostError> {
        self.call("define_counter")?;
        let mut names = self.counter_names.borrow_mut();
        // As in Envoy, a name defined again (another worker) is the same counter.
        if let Some(id) = names.iter().position(|n| n == name) {
            return Ok(id as u32);
        }
        names.push(name.to_string());
        self.counter_values.borrow_mut().push(0);
        Ok(names.len() as u32 - 1)
    }

    fn increment_counter(&self, id: u32) {
        if self.call("increment_counter").is_ok() {
            if let Some(v) = self.counter_values.borrow_mut().get_mut(id as usize) {
                *v += 1;
            }
        }
    }

    fn set_tick_period(&self, period: Duration) -> Result<(), HostError> {
        self.call("set_tick_period")?;
        self.tick_period.set(Some(period));
        Ok(())
    }

    fn log(&self, level: Level, message: fmt::Arguments<'_>) {
        self.logs.borrow_mut().push((level, message.to_string()));
    }
}

mod tests {
    use super::*;

    #[test]
    fn shared_data_is_compare_and_swap() {
        let h = FakeHost::new();
        assert_eq!(h.shared_data_get("k"), None);
        h.shared_data_set("k", b"a", None).unwrap();
        assert_eq!(h.shared_data_get("k"), Some((b"a".to_vec(), 1)));
        assert_eq!(h.shared_data_set("k", b"b", Some(0)), Err(HostError(8)));
        h.shared_data_set("k", b"b", Some(1)).unwrap();
        assert_eq!(h.shared_data_get("k"), Some((b"b".to_vec(), 2)));
        assert_eq!(HostError(8).to_string(), "CasMismatch");
        assert_eq!(HostError(99).to_string(), "status 99");
    }
}
