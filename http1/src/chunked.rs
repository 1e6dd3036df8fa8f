//! The chunked transfer coding (RFC 9112 §7.1), decoded strictly, as hyper's decoder does:
//! a chunk size is `1*HEXDIG` that fits in 64 bits (checked, never saturated), every line ends
//! with CRLF (a bare LF or a CR without LF is an error), chunk data is followed by CRLF, chunk
//! extensions and the trailer section are bounded and hold no control bytes, trailer lines are
//! field lines without obs-fold.
//!
//! A proxy that forwards a chunked body must agree with the next hop on where it ends, or the
//! bytes after it become a request nobody routed. So every body the data plane relays is fed
//! through a [`Decoder`], and on an error nothing after the error is forwarded.

/// Bytes of chunk extensions allowed on one size line (hyper allows 16 KiB per body; one line
/// of 4 KiB is far beyond any real use).
pub const MAX_EXTENSIONS: usize = 4096;

/// Bytes of the trailer section allowed (as a head's fields would be, at a quarter of the
/// head limit).
pub const MAX_TRAILERS: usize = 16 * 1024;

/// Why a chunked body is malformed; the text names the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkError(pub &'static str);

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid chunked body: {}", self.0)
    }
}

impl std::error::Error for ChunkError {}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a size line: a hex digit must come.
    #[default]
    Size,
    /// Among the size's hex digits.
    SizeDigits,
    /// Whitespace after the size (before `;` or CR).
    SizeSpace,
    /// Chunk extensions, up to CR.
    Extension,
    /// CR ending the size line seen; LF expected.
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line, or of the empty line ending the body.
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    EndLf,
    Done,
}

/// Finds where a chunked body ends, checking every rule on the way. Fed as bytes arrive.
#[derive(Debug, Default, Clone)]
pub struct Decoder {
    state: State,
    /// The size being read, then the data left in the current chunk.
    size: u64,
    /// Extension bytes on the current size line.
    extensions: usize,
    /// Trailer bytes so far.
    trailers: usize,
    /// Size lines completed.
    chunks: u64,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Field-value and extension bytes: HTAB, visible ASCII, SP, obs-text.
fn is_text(b: u8) -> bool {
    b == b'\t' || (0x20..=0x7e).contains(&b) || b >= 0x80
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Has the first size line been read whole (and found valid)?
    pub fn sized(&self) -> bool {
        self.chunks > 0
    }

    /// Has the body ended (last chunk, trailers, final CRLF)?
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Take `data`: how many of its bytes belong to the body, and whether the body ended with
    /// them. Bytes are not changed (a proxy forwards them as they came).
    pub fn feed(&mut self, data: &[u8]) -> Result<(usize, bool), ChunkError> {
        self.run(data, |_| {})
    }

    /// As [`Decoder::feed`], appending the chunks' data to `out` (for a client that cannot
    /// read chunked framing).
    pub fn decode(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(usize, bool), ChunkError> {
        self.run(data, |d| out.extend_from_slice(d))
    }

    fn run(
        &mut self,
        data: &[u8],
        mut on_data: impl FnMut(&[u8]),
    ) -> Result<(usize, bool), ChunkError> {
        if self.state == State::Done {
            return Ok((0, true));
        }
        let mut i = 0;
        while i < data.len() {
            if self.state == State::Data {
                // The chunk's data at once. `size` ≥ 1 here; usize fits what is left of `data`.
                let left = data.len() - i;
                let take = usize::try_from(self.size).map_or(left, |s| s.min(left));
                on_data(&data[i..i + take]);
                i += take;
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            self.step(data[i])?;
            i += 1;
            if self.state == State::Done {
                return Ok((i, true));
            }
        }
        Ok((data.len(), false))
    }

    fn step(&mut self, b: u8) -> Result<(), ChunkError> {
        use State::*;
        self.state = match self.state {
            Size | SizeDigits if b.is_ascii_hexdigit() => {
                let digit = u64::from((b as char).to_digit(16).unwrap_or(0));
                self.size = self
                    .size
                    .checked_mul(16)
                    .and_then(|s| s.checked_add(digit))
                    .ok_or(ChunkError("chunk size larger than 2^64 - 1"))?;
                SizeDigits
            }
            Size => return Err(ChunkError("chunk size is not a hexadecimal number")),
            SizeDigits | SizeSpace => match b {
                b' ' | b'\t' => SizeSpace,
                b';' => Extension,
                b'\r' => SizeLf,
                b'\n' => return Err(ChunkError("bare LF ending a chunk size line")),
                _ => return Err(ChunkError("invalid byte after a chunk size")),
            },
            Extension => match b {
                b'\r' => SizeLf,
                b'\n' => return Err(ChunkError("bare LF ending a chunk size line")),
                b if is_text(b) => {
                    self.extensions += 1;
                    if self.extensions > MAX_EXTENSIONS {
                        return Err(ChunkError("chunk extensions longer than 4096 bytes"));
                    }
                    Extension
                }
                _ => return Err(ChunkError("control byte in a chunk extension")),
            },
            SizeLf => {
                if b != b'\n' {
                    return Err(ChunkError("CR without LF in a chunk size line"));
                }
                self.chunks += 1;
                self.extensions = 0;
                if self.size == 0 { TrailerStart } else { Data }
            }
            Data => Data,
            DataCr => {
                if b != b'\r' {
                    return Err(ChunkError("chunk data not followed by CRLF"));
                }
                DataLf
            }
            DataLf => {
                if b != b'\n' {
                    return Err(ChunkError("chunk data not followed by CRLF"));
                }
                Size
            }
            TrailerStart | TrailerName | TrailerValue | TrailerLf | EndLf => {
                self.trailers += 1;
                if self.trailers > MAX_TRAILERS {
                    return Err(ChunkError("trailer section longer than 16384 bytes"));
                }
                match (self.state, b) {
                    (TrailerStart, b'\r') => EndLf,
                    (TrailerStart, b' ' | b'\t') => {
                        return Err(ChunkError(
                            "obs-fold (a line starting with whitespace) in trailers",
                        ));
                    }
                    (TrailerStart | TrailerName, b) if is_tchar(b) => TrailerName,
                    (TrailerName, b':') => TrailerValue,
                    (TrailerValue, b'\r') => TrailerLf,
                    (TrailerValue, b) if is_text(b) => TrailerValue,
                    (TrailerLf, b'\n') => TrailerStart,
                    (EndLf, b'\n') => Done,
                    (_, b'\n') => return Err(ChunkError("bare LF in the trailer section")),
                    (TrailerLf | EndLf, _) => {
                        return Err(ChunkError("CR without LF in the trailer section"));
                    }
                    _ => return Err(ChunkError("invalid trailer field line")),
                }
            }
            Done => Done,
        };
        Ok(())
    }
}

/// Chunk-encode `data` (nothing for an empty piece: an empty chunk would end the body).
pub fn encode(out: &mut Vec<u8>, data: &[u8]) {
    if !data.is_empty() {
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
}

/// The end of a body this hop chunk-encoded itself.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(body: &[u8]) -> Result<(usize, bool), ChunkError> {
        Decoder::new().feed(body)
    }

    #[test]
    fn valid_bodies_end_exactly() {
        let body = b"5\r\nhello\r\n3;ext=1;q=\"a b\"\r\nabc\r\n0\r\n\r\nNEXT";
        assert_eq!(whole(body), Ok((body.len() - 4, true)));
        let with_trailer = b"2\r\nhi\r\n0\r\nx-t: 1\r\nX-U:\t\r\n\r\n";
        assert_eq!(whole(with_trailer), Ok((with_trailer.len(), true)));
        assert_eq!(whole(b"000\r\n\r\n"), Ok((7, true)));
        assert_eq!(whole(b"a \t;e\r\n0123456789\r\n0\r\n\r\n"), Ok((24, true)));
        assert_eq!(whole(b"FFFFFFFFFFFFFFFF\r\n"), Ok((18, false)));
        // Byte by byte, the same answer.
        let mut d = Decoder::new();
        let mut ended = None;
        for (i, b) in body.iter().enumerate() {
            if let Ok((1, true)) = d.feed(std::slice::from_ref(b)) {
                ended = Some(i + 1);
                break;
            }
        }
        assert_eq!(ended, Some(body.len() - 4));
    }

    #[test]
    fn decode_yields_the_data() {
        let mut out = Vec::new();
        let r = Decoder::new().decode(b"5\r\nhello\r\n1;x\r\n!\r\n0\r\n\r\n", &mut out);
        assert_eq!(r, Ok((23, true)));
        assert_eq!(out, b"hello!");
    }

    #[test]
    fn malformed_bodies_are_errors() {
        for (body, rule) in [
            (&b"10000000000000000\r\n"[..], "larger than 2^64"),
            (b"FFFFFFFFFFFFFFFFF\r\n", "larger than 2^64"),
            (b"-1\r\n", "not a hexadecimal"),
            (b"+1\r\n", "not a hexadecimal"),
            (b"0x5\r\nhello\r\n", "invalid byte after"),
            (b"g\r\n", "not a hexadecimal"),
            (b"\r\n", "not a hexadecimal"),
            (b" 5\r\nhello\r\n", "not a hexadecimal"),
            (b"5\nhello\r\n", "bare LF"),
            (b"5;a\nhello\r\n", "bare LF"),
            (b"5\rhello\r\n", "CR without LF"),
            (b"5 5\r\n", "invalid byte after"),
            (b"5\r\nhello!\r\n", "not followed by CRLF"),
            (b"5\r\nhello\n0\r\n\r\n", "not followed by CRLF"),
            (b"5\r\nhelloXX", "not followed by CRLF"),
            (b"5;\x00\r\n", "control byte"),
            (b"0\r\n\n", "bare LF"),
            (b"0\r\nx: 1\n\r\n", "bare LF"),
            (b"0\r\n folded\r\n\r\n", "obs-fold"),
            (b"0\r\n: v\r\n\r\n", "invalid trailer"),
            (b"0\r\nbad name: v\r\n\r\n", "invalid trailer"),
            (b"0\r\n\rX", "CR without LF"),
        ] {
            let r = whole(body);
            assert!(
                matches!(r, Err(ChunkError(e)) if e.contains(rule)),
                "{:?}: {r:?}",
                String::from_utf8_lossy(body)
            );
        }
        let long_ext = format!("1;{}\r\n", "e".repeat(MAX_EXTENSIONS + 1));
        assert!(whole(long_ext.as_bytes()).is_err());
        let long_trailer = format!("0\r\nx: {}\r\n\r\n", "v".repeat(MAX_TRAILERS));
        assert!(whole(long_trailer.as_bytes()).is_err());
    }

    #[test]
    fn sized_after_the_first_size_line() {
        let mut d = Decoder::new();
        assert_eq!(d.feed(b"1f"), Ok((2, false)));
        assert!(!d.sized());
        assert_eq!(d.feed(b"\r\n"), Ok((2, false)));
        assert!(d.sized());
    }

    #[test]
    fn encode_skips_empty_pieces() {
        let mut out = Vec::new();
        encode(&mut out, b"");
        encode(&mut out, &[b'x'; 26]);
        out.extend_from_slice(LAST_CHUNK);
        assert_eq!(
            out,
            format!("1a\r\n{}\r\n0\r\n\r\n", "x".repeat(26)).as_bytes()
        );
    }
}
