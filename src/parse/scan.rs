//! Byte search for the short values of a log line.
//!
//! Most values are a few to a few dozen bytes (a status, a method, a key id,
//! a path). `memchr` is built for long haystacks: its call, CPU dispatch and
//! setup cost more than scanning such a value, and parsing called it a dozen
//! times a line. Here a value of sixteen bytes or more is scanned sixteen at
//! a time in an SSE2 register (on x86-64), a shorter one eight at a time in
//! a general register (SWAR); elsewhere the first [`SHORT`] bytes go through
//! SWAR and only the rest of a long value to `memchr`.

/// Bytes scanned here before handing over to `memchr`.
const SHORT: usize = 64;

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// The index of the first `c` in `hay`.
#[inline]
pub fn find_byte(c: u8, hay: &[u8]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if hay.len() >= 16 {
        // SAFETY: SSE2 is part of x86-64; every load reads 16 bytes inside `hay`.
        return unsafe { find_byte_sse2(c, hay) };
    }
    find_byte_swar(c, hay)
}

/// Sixteen bytes a step in an SSE2 register (every x86-64 has it): a
/// compare, a mask and a test, where the word-at-a-time search needs twice
/// the steps and memchr's call and CPU dispatch cost more than a short
/// value. The last step loads the final sixteen bytes, overlapping what was
/// searched, so no byte past `hay` is read.
#[cfg(target_arch = "x86_64")]
#[inline]
unsafe fn find_byte_sse2(c: u8, hay: &[u8]) -> Option<usize> {
    use std::arch::x86_64::*;
    debug_assert!(hay.len() >= 16);
    let at = |i: usize| unsafe {
        let v = _mm_loadu_si128(hay.as_ptr().add(i) as *const __m128i);
        _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(c as i8))) as u32
    };
    let mut i = 0;
    while i + 16 <= hay.len() {
        let m = at(i);
        if m != 0 {
            return Some(i + m.trailing_zeros() as usize);
        }
        i += 16;
    }
    if i == hay.len() {
        return None;
    }
    let last = hay.len() - 16;
    // Bytes before `i` were searched already.
    let m = at(last) >> (i - last);
    (m != 0).then(|| i + m.trailing_zeros() as usize)
}

/// The word-at-a-time search, for short values (and where SSE2 is not).
#[inline]
fn find_byte_swar(c: u8, hay: &[u8]) -> Option<usize> {
    let pattern = LO * c as u64;
    let short = hay.len().min(SHORT);
    let mut i = 0;
    while i + 8 <= short {
        let word = u64::from_le_bytes(hay[i..i + 8].try_into().expect("8 bytes"));
        let x = word ^ pattern;
        // A byte of `x` is zero where `word` holds `c`; the lowest flag set
        // is exact (a borrow can only flag bytes above a real zero).
        let found = x.wrapping_sub(LO) & !x & HI;
        if found != 0 {
            return Some(i + (found.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    if let Some(n) = hay[i..short].iter().position(|&b| b == c) {
        return Some(i + n);
    }
    if hay.len() > SHORT {
        return memchr::memchr(c, &hay[SHORT..]).map(|n| n + SHORT);
    }
    None
}

/// A line as text: `str::from_utf8`, with a fast path for ASCII (nginx
/// escapes every byte above 0x7f, so nearly every line is ASCII): the OR of
/// all bytes, sixteen at a time, has no high bit. One pass with no branch
/// per word, where std's check branches every eight bytes (it was 3 % of a
/// replay).
pub fn line_text(b: &[u8]) -> Result<&str, std::str::Utf8Error> {
    let word = |w: &[u8; 8]| u64::from_ne_bytes(*w);
    let (chunks, rest) = b.as_chunks::<32>();
    let mut acc = 0u64;
    for c in chunks {
        let (w, _) = c.as_chunks::<8>();
        acc |= word(&w[0]) | word(&w[1]) | word(&w[2]) | word(&w[3]);
    }
    let (words, tail) = rest.as_chunks::<8>();
    for w in words {
        acc |= word(w);
    }
    match b.last_chunk::<8>() {
        // The last eight bytes hold the tail (some counted twice: harmless).
        Some(last) => acc |= word(last),
        None => tail.iter().for_each(|&x| acc |= x as u64),
    }
    if acc & HI == 0 {
        // SAFETY: every byte is below 0x80, and ASCII is UTF-8.
        Ok(unsafe { std::str::from_utf8_unchecked(b) })
    } else {
        std::str::from_utf8(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Agrees with `str::from_utf8`: every length around the chunk edges,
    /// one non-ASCII byte (or a whole character, or a broken one) at every
    /// place.
    #[test]
    fn line_text_is_from_utf8() {
        for len in 0..40 {
            let mut b = vec![b'a'; len];
            assert_eq!(line_text(&b), std::str::from_utf8(&b));
            for at in 0..len {
                for bad in [&[0x80u8][..], &[0xff], &[0xc3, 0xa9], &[0xe2, 0x82]] {
                    let mut v = b.clone();
                    v.splice(at..at + 1, bad.iter().copied());
                    assert_eq!(line_text(&v), std::str::from_utf8(&v), "{v:?}");
                }
            }
            b.clear();
        }
    }

    #[test]
    fn finds_what_memchr_finds() {
        // Every length around the word and SHORT edges, the byte at every
        // place, with bytes that differ from it by one bit and 0x80.
        for len in (0..=SHORT + 20).chain([127, 128, 129, 200]) {
            for c in [b' ', b'"', b'\\', 0x00, 0x80, 0xff] {
                for fill in [b'a', c ^ 1, c ^ 0x80, c.wrapping_add(1)] {
                    if fill == c {
                        continue;
                    }
                    let mut hay = vec![fill; len];
                    assert_eq!(find_byte(c, &hay), None, "len {len} c {c}");
                    for at in 0..len {
                        hay[at] = c;
                        assert_eq!(find_byte(c, &hay), memchr::memchr(c, &hay));
                        assert_eq!(find_byte_swar(c, &hay), memchr::memchr(c, &hay));
                        assert_eq!(find_byte(c, &hay), Some(at), "len {len} c {c} at {at}");
                        // A second one later never wins over the first.
                        if at + 1 < len {
                            hay[len - 1] = c;
                            assert_eq!(find_byte(c, &hay), Some(at));
                            hay[len - 1] = fill;
                        }
                        hay[at] = fill;
                    }
                }
            }
        }
    }
}
