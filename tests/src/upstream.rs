//! A real HTTP/1.1 server on 127.0.0.1 for tests: plain `std::net` and one thread per
//! connection, keep-alive, `content-length` and chunked request bodies.
//!
//! [`Upstream::start`] answers every request 200 with JSON echoing what it saw:
//! `{"method", "path", "headers": {lower-case name: value}, "body": "<utf-8 lossy>"}`.
//! [`Upstream::with_handler`] answers with a caller-supplied function (a fake settler, say).
//! Every request is recorded; [`Upstream::requests`] returns them.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// A request as the server received it. Header names are lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// What a handler answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Sleep this long before answering (to provoke timeouts).
    pub delay: Duration,
}

impl Reply {
    pub fn json(status: u16, body: &serde_json::Value) -> Self {
        Reply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
            delay: Duration::ZERO,
        }
    }
    pub fn empty(status: u16) -> Self {
        Reply {
            status,
            headers: vec![],
            body: vec![],
            delay: Duration::ZERO,
        }
    }
    pub fn delayed(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

pub struct Upstream {
    port: u16,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Upstream {
    /// The echo server.
    pub fn start() -> std::io::Result<Upstream> {
        Self::with_handler(|req| {
            // A test wanting a failing upstream asks for it per request.
            let status = req
                .header("x-test-upstream-status")
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(200);
            Reply::json(status, &echo(req))
        })
    }

    pub fn with_handler(
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> std::io::Result<Upstream> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        {
            let stop = stop.clone();
            let requests = requests.clone();
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let handler = handler.clone();
                    let requests = requests.clone();
                    let stop = stop.clone();
                    thread::spawn(move || serve(conn, handler, requests, stop));
                }
            });
        }
        Ok(Upstream {
            port,
            stop,
            requests,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// The echo body for a request.
pub fn echo(req: &Request) -> serde_json::Value {
    serde_json::json!({
        "method": req.method,
        "path": req.path,
        "headers": req.headers,
        "body": String::from_utf8_lossy(&req.body),
    })
}

fn serve(
    conn: TcpStream,
    handler: Handler,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let req = match read_request(&mut reader) {
            Ok(Some(r)) => r,
            _ => break,
        };
        if let Ok(mut r) = requests.lock() {
            r.push(req.clone());
        }
        let close = req
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let reply = handler(&req);
        if !reply.delay.is_zero() {
            thread::sleep(reply.delay);
        }
        if write_reply(&mut writer, &reply, close).is_err() || close {
            break;
        }
    }
    let _ = writer.shutdown(Shutdown::Both);
}

fn read_line<R: BufRead>(r: &mut R) -> std::io::Result<Option<String>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    Ok(Some(line.trim_end_matches(['\r', '\n']).to_string()))
}

/// Reads header lines up to the blank line: lower-case names, repeated names joined with
/// ", ". `None` when the peer closed before the blank line.
pub(crate) fn read_headers<R: BufRead>(
    r: &mut R,
) -> std::io::Result<Option<BTreeMap<String, String>>> {
    let mut headers = BTreeMap::new();
    loop {
        let Some(line) = read_line(r)? else {
            return Ok(None);
        };
        if line.is_empty() {
            return Ok(Some(headers));
        }
        if let Some((k, v)) = line.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            let v = v.trim().to_string();
            headers
                .entry(k)
                .and_modify(|e: &mut String| {
                    e.push_str(", ");
                    e.push_str(&v);
                })
                .or_insert(v);
        }
    }
}

fn read_request<R: BufRead>(r: &mut R) -> std::io::Result<Option<Request>> {
    let Some(start) = read_line(r)? else {
        return Ok(None);
    };
    let mut parts = start.split_whitespace();
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        return Ok(None);
    };
    let Some(headers) = read_headers(r)? else {
        return Ok(None);
    };
    let body = read_body(r, &headers)?;
    Ok(Some(Request {
        method: method.to_string(),
        path: path.to_string(),
        headers,
        body,
    }))
}

/// Reads a body framed by `content-length` or chunked transfer encoding.
pub(crate) fn read_body<R: BufRead>(
    r: &mut R,
    headers: &BTreeMap<String, String>,
) -> std::io::Result<Vec<u8>> {
    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        let mut body = Vec::new();
        while let Some(size_line) = read_line(r)? {
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("0").trim(), 16)
                .unwrap_or(0);
            if size == 0 {
                // Trailers until the empty line.
                while let Some(l) = read_line(r)? {
                    if l.is_empty() {
                        break;
                    }
                }
                break;
            }
            let mut chunk = vec![0u8; size];
            r.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk);
            let _ = read_line(r)?;
        }
        return Ok(body);
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(body)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        402 => "Payment Required",
        404 => "Not Found",
        409 => "Conflict",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn write_reply<W: Write>(w: &mut W, reply: &Reply, close: bool) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("content-length: {}\r\n", reply.body.len()));
    if close {
        head.push_str("connection: close\r\n");
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    w.write_all(&reply.body)?;
    w.flush()
}
