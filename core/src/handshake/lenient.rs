//! Tolerance for whitespace between a header name and its colon, as sent by
//! Verifone SCA terminals (`x-vfi-pinpad-id : 1`, seeds/000).
//!
//! RFC 9112 §5.1: "No whitespace is allowed between the field name and colon
//! [...] A server MUST reject, with a response status code of 400 (Bad
//! Request), any received request message that contains whitespace between a
//! header field name and colon." The rule exists against request smuggling
//! through framing headers. httparse offers the relaxation only for responses
//! (`ParserConfig::allow_spaces_after_header_name_in_responses`); there is no
//! request equivalent (httparse 1.10), so this module rewrites such lines
//! (`name SP* :` into `name:`) in a bounded copy of the head before httparse
//! parses it again, and records the names. The caller still answers 400 when
//! one of them is a header the relay interprets ([`is_interpreted`]): the
//! tolerance only ever applies to headers whose meaning the relay ignores.

/// Result of normalising a (possibly incomplete) head.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Normalized {
    /// The last line ends in `name SP*`: whether a colon follows is not known yet.
    NeedMore,
    /// The head with whitespace before colons removed.
    Head {
        /// The rewritten bytes: the head up to and including its final empty
        /// line, or all of the input when the head is incomplete.
        bytes: Vec<u8>,
        /// How many whitespace bytes were removed (all of them inside the head).
        removed: usize,
        /// Lowercase names of the rewritten header lines.
        names: Vec<String>,
    },
}

/// Headers with meaning to the relay: framing, routing, the handshake and
/// credentials. Whitespace before their colon is never tolerated.
pub(crate) fn is_interpreted(lowercase_name: &str) -> bool {
    matches!(
        lowercase_name,
        "host"
            | "content-length"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "expect"
            | "connection"
            | "upgrade"
            | "content-type"
            | "authorization"
            | "origin"
            | "forwarded"
            | "x-forwarded-for"
            | "x-forwarded-host"
            | "x-forwarded-proto"
            | "x-real-ip"
    ) || lowercase_name.starts_with("sec-websocket-")
}

/// Rewrites `name SP* :` header lines to `name:`. `buf` is already bounded by
/// the head limit by the caller, so the copy is bounded too.
pub(crate) fn normalize(buf: &[u8]) -> Normalized {
    let mut out = Vec::with_capacity(buf.len());
    let mut removed = 0;
    let mut names = Vec::new();
    let mut pos = 0;

    // RFC 9112 §2.2: empty lines before the request-line are ignored (httparse too).
    while pos < buf.len() {
        let rest = &buf[pos..];
        let skip = if rest.starts_with(b"\r\n") {
            2
        } else if rest.starts_with(b"\n") {
            1
        } else {
            break;
        };
        pos += skip;
    }
    out.extend_from_slice(&buf[..pos]);

    // The request-line: copied as is.
    match find_lf(buf, pos) {
        Some(lf) => {
            out.extend_from_slice(&buf[pos..=lf]);
            pos = lf + 1;
        }
        None => {
            out.extend_from_slice(&buf[pos..]);
            return Normalized::Head {
                bytes: out,
                removed,
                names,
            };
        }
    }

    // Header lines, up to and including the empty line that ends the head.
    while pos < buf.len() {
        let lf = find_lf(buf, pos);
        let line_end = lf.unwrap_or(buf.len());
        let line = &buf[pos..line_end];
        if line.is_empty() || line == b"\r" {
            out.extend_from_slice(&buf[pos..lf.map_or(buf.len(), |i| i + 1)]);
            break;
        }
        let name_len = line
            .iter()
            .take_while(|&&b| super::headers::is_tchar(b))
            .count();
        let ws = line
            .iter()
            .skip(name_len)
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
        if name_len > 0 && ws > 0 {
            match line.get(name_len + ws) {
                None if lf.is_none() => return Normalized::NeedMore,
                Some(b':') => {
                    out.extend_from_slice(&line[..name_len]);
                    out.extend_from_slice(&line[name_len + ws..]);
                    removed += ws;
                    names.push(String::from_utf8_lossy(&line[..name_len]).to_ascii_lowercase());
                }
                _ => out.extend_from_slice(line),
            }
        } else {
            out.extend_from_slice(line);
        }
        match lf {
            Some(i) => {
                out.push(b'\n');
                pos = i + 1;
            }
            None => break,
        }
    }
    Normalized::Head {
        bytes: out,
        removed,
        names,
    }
}

fn find_lf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| from + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8]) -> (Vec<u8>, usize, Vec<String>) {
        match normalize(bytes) {
            Normalized::Head {
                bytes,
                removed,
                names,
            } => (bytes, removed, names),
            Normalized::NeedMore => panic!("unexpected NeedMore"),
        }
    }

    #[test]
    fn removes_space_before_colon_in_head_only() {
        let (b, removed, names) =
            head(b"GET / HTTP/1.1\r\nHost: a\r\nx-vfi-pinpad-id \t: 1\r\n\r\nbody x : y");
        assert_eq!(
            b,
            b"GET / HTTP/1.1\r\nHost: a\r\nx-vfi-pinpad-id: 1\r\n\r\n"
        );
        assert_eq!(removed, 2);
        assert_eq!(names, ["x-vfi-pinpad-id"]);
    }

    #[test]
    fn request_line_and_other_lines_untouched() {
        let input = b"\r\nGET /a :b HTTP/1.1\r\nA: b : c\r\nbad line\r\n";
        let (b, removed, names) = head(input);
        assert_eq!(b, input);
        assert_eq!(removed, 0);
        assert!(names.is_empty());
    }

    #[test]
    fn undecided_last_line_needs_more() {
        assert_eq!(
            normalize(b"GET / HTTP/1.1\r\nx-vfi-pinpad-id  "),
            Normalized::NeedMore
        );
        let (b, _, _) = head(b"GET / HTTP/1.1\r\nx-vfi-pinpad-id");
        assert_eq!(b, b"GET / HTTP/1.1\r\nx-vfi-pinpad-id");
    }

    #[test]
    fn interpreted_headers() {
        assert!(is_interpreted("content-length"));
        assert!(is_interpreted("sec-websocket-key"));
        assert!(!is_interpreted("x-vfi-pinpad-id"));
    }
}
