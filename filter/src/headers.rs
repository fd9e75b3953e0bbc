//! The request's header map as the host serializes it (`proxy_get_header_map_pairs`), read
//! in place: one host call lists every header, and every name the filter needs (`:path`,
//! `:method`, `:authority`, `authorization`, `payment-signature`, the `x-x402-*` names) is
//! then a scan of that one buffer instead of a host call each.
//!
//! Format (little endian): `u32` count, then per pair `u32` name length and `u32` value
//! length, then per pair the name bytes, a NUL, the value bytes, a NUL.

use std::borrow::Cow;

use crate::identity;

/// A validated serialized header map. Lookups follow Envoy's `get_header_map_value`: the
/// first header of that name (ASCII case-insensitive).
pub struct HeaderPairs {
    buf: Vec<u8>,
    count: usize,
}

fn u32_at(buf: &[u8], at: usize) -> Option<usize> {
    let b = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

impl HeaderPairs {
    /// `None` if `buf` is not a well-formed serialized map. An empty buffer is an empty map.
    pub fn parse(buf: Vec<u8>) -> Option<HeaderPairs> {
        if buf.is_empty() {
            return Some(HeaderPairs { buf, count: 0 });
        }
        let count = u32_at(&buf, 0)?;
        let mut data = count.checked_mul(8)?.checked_add(4)?;
        if data > buf.len() {
            return None;
        }
        for i in 0..count {
            for len_at in [4 + i * 8, 8 + i * 8] {
                let len = u32_at(&buf, len_at)?;
                data = data.checked_add(len)?.checked_add(1)?;
                if data > buf.len() {
                    return None;
                }
            }
        }
        Some(HeaderPairs { buf, count })
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.count
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Every (name, value) pair in order.
    pub fn iter(&self) -> Pairs<'_> {
        Pairs {
            buf: &self.buf,
            next: 0,
            count: self.count,
            data: 4 + self.count * 8,
        }
    }

    /// The value of the first header named `name` (ASCII case-insensitive).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// [`HeaderPairs::get`] as text: bytes that are not UTF-8 become U+FFFD (so such a token
    /// is malformed and such a path still matches its priced prefix). Borrowed when valid.
    pub fn get_str(&self, name: &str) -> Option<Cow<'_, str>> {
        self.get(name).map(|v| match std::str::from_utf8(v) {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => String::from_utf8_lossy(v),
        })
    }

    /// Is there a header named `name` (ASCII case-insensitive)?
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The client's `x-x402-*` names, lower-cased, each once (usually none: no allocation).
    /// Envoy's codecs only admit token characters in names, so every name is UTF-8.
    pub fn reserved_names(&self) -> Vec<String> {
        identity::reserved_names(self.reserved().filter_map(|n| std::str::from_utf8(n).ok()))
    }

    /// Is any header in the filter's `x-x402-` namespace? (One pass, no allocation.)
    pub fn has_reserved(&self) -> bool {
        self.reserved().next().is_some()
    }

    fn reserved(&self) -> impl Iterator<Item = &[u8]> {
        self.iter()
            .map(|(n, _)| n)
            .filter(|n| identity::is_reserved_bytes(n))
    }
}

pub struct Pairs<'a> {
    buf: &'a [u8],
    next: usize,
    count: usize,
    data: usize,
}

impl<'a> Iterator for Pairs<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.count {
            return None;
        }
        let at = 4 + self.next * 8;
        let name_len = u32_at(self.buf, at)?;
        let value_len = u32_at(self.buf, at + 4)?;
        let name = self.buf.get(self.data..self.data + name_len)?;
        let value_at = self.data + name_len + 1;
        let value = self.buf.get(value_at..value_at + value_len)?;
        self.data = value_at + value_len + 1;
        self.next += 1;
        Some((name, value))
    }
}

/// Serializes pairs as the host does: local replies' headers (wasm), fake hosts (tests).
#[cfg_attr(not(any(test, target_arch = "wasm32")), allow(dead_code))]
pub fn serialize<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Vec<u8> {
    let pairs: Vec<(&str, &[u8])> = pairs.into_iter().collect();
    let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
    for (n, v) in &pairs {
        out.extend_from_slice(&(n.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (n, v) in &pairs {
        out.extend_from_slice(n.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_in_a_serialized_map() {
        let buf = serialize([
            (":path", &b"/api/weather?x=1"[..]),
            (":method", b"GET"),
            ("Authorization", b"Bearer a"),
            ("authorization", b"Bearer b"),
            ("x-x402-payer", b"0xforged"),
            ("X-X402-Payer", b"0xforged2"),
            ("x-x402-other", b""),
            ("bin", b"\xff\xfe"),
        ]);
        let m = HeaderPairs::parse(buf).unwrap();
        assert_eq!(m.len(), 8);
        assert_eq!(m.get(":path"), Some(&b"/api/weather?x=1"[..]));
        assert_eq!(
            m.get_str("authorization").as_deref(),
            Some("Bearer a"),
            "first wins"
        );
        assert_eq!(m.get_str("x-x402-other").as_deref(), Some(""));
        assert_eq!(m.get_str("bin").as_deref(), Some("\u{fffd}\u{fffd}"));
        assert!(m.get("payment-signature").is_none());
        assert!(m.contains("X-X402-PAYER"));
        assert_eq!(m.reserved_names(), ["x-x402-payer", "x-x402-other"]);
        assert!(m.has_reserved());
        let plain = HeaderPairs::parse(serialize([(":path", &b"/"[..]), ("x-x40", b"")])).unwrap();
        assert!(!plain.has_reserved());
        assert!(plain.reserved_names().is_empty());
        assert_eq!(m.iter().count(), 8);
    }

    #[test]
    fn empty_and_malformed_maps() {
        let m = HeaderPairs::parse(Vec::new()).unwrap();
        assert!(m.is_empty());
        assert!(m.get(":path").is_none());
        assert!(m.reserved_names().is_empty());
        let m = HeaderPairs::parse(serialize([])).unwrap();
        assert!(m.is_empty());
        let good = serialize([(":path", &b"/a"[..]), ("b", b"c")]);
        for cut in 1..good.len() {
            assert!(HeaderPairs::parse(good[..cut].to_vec()).is_none(), "{cut}");
        }
        // A count far beyond the buffer.
        assert!(HeaderPairs::parse(vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]).is_none());
        // Lengths that overflow.
        let mut bad = 1u32.to_le_bytes().to_vec();
        bad.extend_from_slice(&u32::MAX.to_le_bytes());
        bad.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(HeaderPairs::parse(bad).is_none());
    }
}
