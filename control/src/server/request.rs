//! API requests from bytes: cutting a connection's byte stream into
//! request lines of bounded length ([`LineFramer`]) and turning a line
//! into a [`Call`] or the error response the client gets ([`parse`]).
//! Pure code with no I/O, so the fuzz target `api_request` drives it
//! exactly as the server does.
//!
//! Invariants: the framer never holds more than its limit plus one read
//! of bytes; every line gets either a `Call` or one error;
//! nothing here panics on any input.
use podrouter_api::{ApiError, Call, ErrorCode, Request, API_VERSION};

/// Why a connection's bytes cannot be cut into requests.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("request longer than the {limit}-byte limit")]
    TooLong { limit: usize },
}

/// The bytes a connection has sent that are not yet a whole request.
#[derive(Debug)]
pub struct LineFramer {
    buf: Vec<u8>,
    /// `buf[..scanned]` holds no newline.
    scanned: usize,
    limit: usize,
}

impl LineFramer {
    /// A framer for lines of at most `limit` bytes (without the newline).
    pub fn new(limit: usize) -> LineFramer {
        LineFramer {
            buf: Vec::new(),
            scanned: 0,
            limit,
        }
    }

    /// Appends bytes as read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Whether nothing of a next request has arrived.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The next whole line (without its newline), `None` until one has
    /// arrived; an error once the line being received is over the limit
    /// (the connection cannot be resynchronised: close it).
    pub fn next_line(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let too_long = FrameError::TooLong { limit: self.limit };
        match self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
            Some(i) => {
                let end = self.scanned + i;
                if end > self.limit {
                    return Err(too_long);
                }
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                self.scanned = 0;
                Ok(Some(line))
            }
            None if self.buf.len() > self.limit => Err(too_long),
            None => {
                self.scanned = self.buf.len();
                Ok(None)
            }
        }
    }
}

/// The call one request line asks for, or the error to answer it with.
pub fn parse(line: &[u8]) -> Result<Call, ApiError> {
    let err = |code, message: String| ApiError { code, message };
    let Ok(line) = std::str::from_utf8(line) else {
        return Err(err(ErrorCode::BadRequest, "request is not UTF-8".into()));
    };
    // Check the version before the shape, so a newer client learns what is
    // wrong even if its request has fields this daemon does not know.
    let value: serde_json::Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return Err(err(ErrorCode::BadRequest, format!("not JSON: {e}"))),
    };
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(API_VERSION) => {}
        Some(v) => {
            return Err(err(
                ErrorCode::UnsupportedVersion,
                format!("API version {v} is not supported; this daemon speaks {API_VERSION}"),
            ))
        }
        None => {
            return Err(err(
                ErrorCode::BadRequest,
                "request has no numeric \"version\"".into(),
            ))
        }
    }
    match serde_json::from_value::<Request>(value) {
        Ok(req) => Ok(req.call),
        Err(e) => Err(err(ErrorCode::BadRequest, format!("bad request: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_come_out_whole_whatever_the_reads() {
        let mut f = LineFramer::new(64);
        f.push(b"{\"a\"");
        assert_eq!(f.next_line(), Ok(None));
        f.push(b":1}\n{\"b\":2}\n{\"c\"");
        assert_eq!(f.next_line(), Ok(Some(b"{\"a\":1}".to_vec())));
        assert_eq!(f.next_line(), Ok(Some(b"{\"b\":2}".to_vec())));
        assert_eq!(f.next_line(), Ok(None));
        assert!(!f.is_empty());
        f.push(b":3}\n");
        assert_eq!(f.next_line(), Ok(Some(b"{\"c\":3}".to_vec())));
        assert!(f.is_empty());
    }

    #[test]
    fn a_line_over_the_limit_is_refused_before_its_end_arrives() {
        let mut f = LineFramer::new(8);
        f.push(b"12345678\n");
        assert_eq!(f.next_line(), Ok(Some(b"12345678".to_vec())));
        f.push(b"123456789");
        assert_eq!(f.next_line(), Err(FrameError::TooLong { limit: 8 }));
        let mut f = LineFramer::new(8);
        f.push(b"123456789\n");
        assert_eq!(f.next_line(), Err(FrameError::TooLong { limit: 8 }));
    }

    #[test]
    fn parse_answers_every_kind_of_bad_line() {
        assert!(matches!(
            parse(br#"{"version":1,"method":"status"}"#),
            Ok(Call::Status)
        ));
        let code = |line: &[u8]| parse(line).unwrap_err().code;
        assert_eq!(code(b"\xff\xfe"), ErrorCode::BadRequest);
        assert_eq!(code(b"{not json"), ErrorCode::BadRequest);
        assert_eq!(code(br#"{"method":"status"}"#), ErrorCode::BadRequest);
        assert_eq!(
            code(br#"{"version":99,"method":"whatever"}"#),
            ErrorCode::UnsupportedVersion
        );
        assert_eq!(
            code(br#"{"version":1,"method":"nope"}"#),
            ErrorCode::BadRequest
        );
    }
}
