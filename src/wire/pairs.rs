//! The proxy-wasm "pairs" encoding of a header map, read in place: the host's one buffer is
//! borrowed, not copied into a `String` and a `Vec` per header (the SDK's way), which is most of
//! what reading the request's headers costs the filter on a cache hit.
//!
//! Layout: the number of pairs (u32, little-endian), then each pair's name and value lengths
//! (u32, u32), then each name and value, each followed by a NUL byte.

/// The pairs of `bytes`, names and values borrowed; `None` when the buffer is not well formed
/// (a host bug: the request is then judged with no headers, which denies or challenges).
#[cfg_attr(kcpep_size, optimize(speed))]
pub fn parse(bytes: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let word = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let count = word(0)?;
    // each pair takes 8 bytes of lengths and 2 of NULs at least: a count the buffer cannot hold
    // is refused before anything is allocated for it
    if count > bytes.len() / 10 {
        return None;
    }
    let mut out = Vec::with_capacity(count);
    let mut data = 4usize.checked_add(count.checked_mul(8)?)?;
    for i in 0..count {
        let name_len = word(4 + i * 8)?;
        let value_len = word(8 + i * 8)?;
        let name = bytes.get(data..data.checked_add(name_len)?)?;
        data = data.checked_add(name_len)?;
        if bytes.get(data) != Some(&0) {
            return None;
        }
        data += 1;
        let value = bytes.get(data..data.checked_add(value_len)?)?;
        data = data.checked_add(value_len)?;
        if bytes.get(data) != Some(&0) {
            return None;
        }
        data += 1;
        out.push((name, value));
    }
    Some(out)
}

/// The encoding of `pairs` (a local reply's headers).
pub fn encode<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone) -> Vec<u8> {
    let mut out = Vec::new();
    let count = pairs.clone().count() as u32;
    out.extend_from_slice(&count.to_le_bytes());
    for (k, v) in pairs.clone() {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        super::encode(pairs.iter().copied())
    }

    #[test]
    fn reads_what_the_host_writes() {
        let pairs: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"GET"),
            (b":path", b"/account/1"),
            (b"x-empty", b""),
            (b"x-bytes", b"\xff\x00\xfe"),
            (b"x-empty", b"again"),
        ];
        assert_eq!(parse(&encode(&pairs)), Some(pairs));
        assert_eq!(parse(&[]), Some(Vec::new()));
        assert_eq!(parse(&encode(&[])), Some(Vec::new()));
    }

    #[test]
    fn a_malformed_buffer_is_refused_without_a_panic() {
        let good = encode(&[(b"a", b"bc"), (b"d", b"")]);
        // every truncation (nothing at all is an empty map), every single-byte change of the lengths
        for n in 1..good.len() {
            assert_eq!(parse(&good[..n]), None, "truncated to {n}");
        }
        for i in 0..20 {
            for b in [0u8, 1, 0x7f, 0xff] {
                let mut bad = good.clone();
                bad[i] = b;
                let _ = parse(&bad);
            }
        }
        // a missing NUL, a count far over the buffer
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] = b'x';
        assert_eq!(parse(&bad), None);
        assert_eq!(parse(&u32::MAX.to_le_bytes()), None);
    }
}
