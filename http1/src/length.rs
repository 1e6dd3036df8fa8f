//! `Content-Length`: the one parser every path uses (RFC 9110 §8.6, RFC 9112 §6.3).

/// Why a `Content-Length` cannot frame a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LengthError {
    /// Not a decimal number: a sign, a space inside, hex, an empty list element.
    Invalid(String),
    /// Larger than 2^64 - 1.
    Overflow,
    /// Two different values (in two fields or one list).
    Conflicting(u64, u64),
}

impl std::fmt::Display for LengthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LengthError::Invalid(v) => write!(f, "{v:?} is not a decimal number of bytes"),
            LengthError::Overflow => f.write_str("larger than 2^64 - 1"),
            LengthError::Conflicting(a, b) => write!(f, "two different values ({a} and {b})"),
        }
    }
}

/// The length the `Content-Length` fields give together: `None` when there are none. Each
/// value must be `1*DIGIT`; repeated fields with the same value count as one, different ones
/// are an error. A list in one field (`42, 42`), which RFC 9110 §8.6 lets a recipient either
/// take or refuse, is refused, as hyper (the next hop) refuses it: two hops must never
/// disagree on a length. Arithmetic is checked: nothing from the wire saturates or wraps.
pub fn content_length<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Option<u64>, LengthError> {
    let mut length: Option<u64> = None;
    for value in values {
        let n = decimal(trim_ows(value))?;
        match length {
            Some(l) if l != n => return Err(LengthError::Conflicting(l, n)),
            _ => length = Some(n),
        }
    }
    Ok(length)
}

/// `1*DIGIT` as a u64.
fn decimal(digits: &[u8]) -> Result<u64, LengthError> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(LengthError::Invalid(
            String::from_utf8_lossy(digits).into_owned(),
        ));
    }
    digits.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(d - b'0')))
            .ok_or(LengthError::Overflow)
    })
}

/// Optional whitespace (SP and HTAB only, RFC 9110 §5.6.3) off both ends.
pub(crate) fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let Some(start) = start else { return &[] };
    let end = v
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &v[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cl(values: &[&str]) -> Result<Option<u64>, LengthError> {
        content_length(values.iter().map(|v| v.as_bytes()))
    }

    #[test]
    fn lengths() {
        assert_eq!(cl(&[]), Ok(None));
        assert_eq!(cl(&["0"]), Ok(Some(0)));
        assert_eq!(cl(&["007"]), Ok(Some(7)));
        assert_eq!(cl(&[" 42\t"]), Ok(Some(42)));
        assert_eq!(cl(&["42", "42"]), Ok(Some(42)));
        assert_eq!(cl(&["18446744073709551615"]), Ok(Some(u64::MAX)));
        assert_eq!(cl(&["18446744073709551616"]), Err(LengthError::Overflow));
        assert_eq!(cl(&["99999999999999999999999"]), Err(LengthError::Overflow));
        assert_eq!(cl(&["1", "2"]), Err(LengthError::Conflicting(1, 2)));
        for bad in [
            "", "+1", "-1", "0x10", "1 2", "1,", ",1", "1.0", "١", "42, 42", "1,2",
        ] {
            assert!(
                matches!(cl(&[bad]), Err(LengthError::Invalid(_))),
                "{bad:?}"
            );
        }
    }
}
