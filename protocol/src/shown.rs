//! Client text quoted in an error message, cut short: a 50 KB field is not echoed back.

/// How a client's text is echoed in an error message: quoted, and cut to its first
/// [`SHOWN_MAX`] characters (a field may be as large as the body limit allows).
pub fn shown(s: &str) -> String {
    match s.char_indices().nth(SHOWN_MAX) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &s[..cut], s.len()),
    }
}

/// The longest client text an error message repeats (see [`shown`]).
pub const SHOWN_MAX: usize = 80;
